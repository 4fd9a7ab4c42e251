"""The ``rnabench`` protocol: per-sequence scores as RnaBench 0.1.2 computes them for its folding
benchmarks (``RnaFoldingBenchmark``), and the mean as that benchmark takes it.

This is what the original's ``test_downstream_ss_rnabench.py`` reports for TS0 and RnaBench's
intra-/inter-family splits. RnaBench's definitions (``RnaBench/lib/metrics.py``, ``benchmarks.py``),
written here from scratch and checked against RnaBench's own functions to 1e-9
(``tests/metrics/test_rnabench.py``, fixture made by ``tests/fixtures/rnabench/make_fixture.py``):

* Both structures are symmetric 0/1 ``(L, L)`` matrices: each pair fills two cells. The original
  hands RnaBench the upper-triangle pairs ``i < j`` of ``sigmoid(logits) > threshold``, so a
  matrix given here is read the same way (its cells above the diagonal).
* ``tp``, ``fp``, ``fn`` and ``tn`` count cells of the *whole* matrix: every pair twice, and the
  ``L`` diagonal cells among the true negatives. With ``e = 1e-8``:
  ``f1_score = 2tp / (2tp + fp + fn + e)``, ``precision = tp / (tp + fp + e)``,
  ``recall = tp / (tp + fn + e)``, ``specificity = tn / (tn + fp + e)`` and
  ``mcc = (tp tn - fp fn) / sqrt((tp + fp)(tp + fn)(tn + fp)(tn + fn) + e)``, so 0 where a ratio
  would be 0/0 (and a hair below 1 for a perfect prediction).
* ``f1_shifted``, e2efold's, on the whole matrix: a reference cell counts as found when the
  prediction has that cell or one of its four neighbours (up, down, left, right); ``tp`` is the
  number found, ``fn`` the rest, ``fp = predicted cells - tp`` and ``F1 = 2tp / (2tp + fp + fn)``.
  Precision is not counted on its own, so ``fp`` goes negative and the score above 1 when one
  predicted pair sits next to several reference pairs (multi-partner bases); it is NaN when
  neither structure has a pair. (The ``protrna`` protocol's shifted F1 is RiNALMo's, which
  differs: see :mod:`protrna.metrics.protrna`.)
* ``weisfeiler_lehman``: each structure is a graph on the ``L`` bases with an edge per pair (no
  backbone edges) and each base labelled by its position; the score is the normalised
  Weisfeiler-Lehman subtree kernel of grakel's ``WeisfeilerLehman(n_iter=5, normalize=True)``
  with vertex histograms. At level 0 a base's label is its position, at level h its level h-1
  label with the multiset of its partners' level h-1 labels, and with ``c_h`` the label
  histogram of a graph at level h, ``WL = sum_h <c_h(pred), c_h(ref)> /
  sqrt(sum_h |c_h(pred)|^2 sum_h |c_h(ref)|^2)`` over h = 0..5: the fraction of (base, level)
  whose h-step pairing neighbourhood is the same in both structures.
* ``solved``: 1 when the two matrices are equal, 0 otherwise.
* Averaging (:func:`mean_scores`): the benchmark scores only references with at least one pair
  (:func:`is_scored`; it drops the others), turns NaN into 0 and takes the plain mean over
  sequences of every metric. It prints means rounded to 3 decimals; they are kept whole here.

>>> from protrna.structure import BasePairs
>>> target = BasePairs(8, [(0, 7), (1, 6)])
>>> pred = BasePairs(8, [(0, 7), (2, 6)])
>>> {name: round(value, 3) for name, value in score(pred, target).items()}
... # doctest: +NORMALIZE_WHITESPACE
{'f1_score': 0.5, 'mcc': 0.467, 'weisfeiler_lehman': 0.688, 'recall': 0.5, 'precision': 0.5,
 'specificity': 0.967, 'solved': 0.0, 'f1_shifted': 1.0}
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Mapping

import numpy as np

from ..structure import BasePairs
from .protrna import Structure, relax

#: Metric names as RnaBench's folding benchmark returns them, in its order.
METRICS: tuple[str, ...] = (
    "f1_score", "mcc", "weisfeiler_lehman", "recall", "precision", "specificity", "solved", "f1_shifted",
)

#: Added by RnaBench to every denominator of the count-based metrics (under the root for MCC).
EPSILON = 1e-8

#: Refinement levels of the Weisfeiler-Lehman kernel after the initial labels (grakel's ``n_iter``).
WL_ITERATIONS = 5


def _pairs(structure: Structure, length: int | None, name: str) -> BasePairs:
    """The pairs RnaBench would be handed: as given, or the cells above a matrix's diagonal."""
    if hasattr(structure, "detach"):  # a torch tensor straight from the head
        structure = structure.detach().cpu().numpy()
    if isinstance(structure, BasePairs):
        pairs = structure
    elif isinstance(structure, np.ndarray) and structure.ndim == 2 and structure.shape[0] == structure.shape[1]:
        if structure.dtype != bool and not np.isin(structure, (0, 1)).all():
            raise ValueError(
                f"{name} holds values other than 0 and 1; threshold probabilities first "
                "(protrna.structure.decode_matrix)"
            )
        rows, cols = np.nonzero(np.triu(structure != 0, k=1))
        pairs = BasePairs(structure.shape[0], np.stack([rows, cols], axis=1))
    else:
        if length is None:
            raise ValueError(f"{name} is a list of pairs: give the sequence length (length=...)")
        pairs = BasePairs(length, np.asarray(structure).tolist())
    if length is not None and pairs.length != length:
        raise ValueError(f"{name} is for {pairs.length} nt, but length={length}")
    return pairs


def _length_of(structure: Structure) -> int | None:
    if isinstance(structure, BasePairs):
        return structure.length
    shape = getattr(structure, "shape", ())
    return int(shape[0]) if len(shape) == 2 and shape[0] == shape[1] else None


def _matrices(pred: Structure, target: Structure, length: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Both structures as symmetric bool matrices of one length."""
    lengths = (_length_of(pred), _length_of(target))
    if length is None and None not in lengths and lengths[0] != lengths[1]:
        raise ValueError(f"pred is {lengths[0]} nt long but target is {lengths[1]} nt long")
    length = length if length is not None else (lengths[0] or lengths[1])
    return _pairs(pred, length, "pred").to_matrix(dtype=bool), _pairs(target, length, "target").to_matrix(dtype=bool)


def count_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """F1, MCC, recall, precision and specificity from the cell counts of two symmetric bool
    matrices, in RnaBench's arithmetic (same float operations, same order)."""
    tp = int(np.count_nonzero(pred & target))
    fp = float(np.count_nonzero(pred) - tp)
    fn = float(np.count_nonzero(target) - tp)
    tn = int(pred.size - tp - fp - fn)
    marginals = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return {
        "f1_score": 2 * tp / (2 * tp + fp + fn + EPSILON),
        "mcc": (float(tp * tn) - fp * fn) / math.sqrt(marginals + EPSILON),
        "recall": tp / (tp + fn + EPSILON),
        "precision": tp / (tp + fp + EPSILON),
        "specificity": tn / (tn + fp + EPSILON),
    }


def shifted_f1(pred: np.ndarray, target: np.ndarray) -> float:
    """e2efold's shifted F1 on two symmetric bool matrices, as RnaBench takes it; NaN when
    neither has a pair. Can exceed 1 around multi-partner bases (see the module docstring).

    >>> m = np.zeros((6, 6), dtype=bool); m[0, 5] = m[5, 0] = True
    >>> n = np.zeros((6, 6), dtype=bool); n[1, 5] = n[5, 1] = True
    >>> shifted_f1(m, n)
    1.0
    """
    found = int(np.count_nonzero(target & relax(pred)))
    missed = int(np.count_nonzero(target)) - found
    false = int(np.count_nonzero(pred)) - found
    denominator = 2 * found + false + missed
    return 2 * found / denominator if denominator else math.nan


def weisfeiler_lehman(pred: np.ndarray, target: np.ndarray, iterations: int = WL_ITERATIONS) -> float:
    """Normalised Weisfeiler-Lehman subtree kernel of the two pairing graphs, bases labelled by
    position, as grakel computes it for RnaBench (see the module docstring).

    >>> m = np.zeros((4, 4), dtype=bool); m[0, 3] = m[3, 0] = True
    >>> weisfeiler_lehman(m, m), round(weisfeiler_lehman(m, np.zeros((4, 4), dtype=bool)), 4)
    (1.0, 0.5833)
    """
    length = pred.shape[0]
    if length == 0:
        return 0.0
    graphs = [[np.flatnonzero(row).tolist() for row in matrix] for matrix in (pred, target)]
    labels = [list(range(length)), list(range(length))]
    shared = norm_pred = norm_target = 0
    for level in range(iterations + 1):
        if level:
            # A new label per distinct (own label, partners' labels) in either graph, so that equal
            # neighbourhoods get equal labels across the two graphs and nothing else does.
            names: dict[tuple, int] = {}
            labels = [
                [names.setdefault((old[v], tuple(sorted(old[n] for n in partners[v]))), len(names))
                 for v in range(length)]
                for old, partners in zip(labels, graphs)
            ]
        counts_pred, counts_target = Counter(labels[0]), Counter(labels[1])
        shared += sum(count * counts_target[label] for label, count in counts_pred.items())
        norm_pred += sum(count * count for count in counts_pred.values())
        norm_target += sum(count * count for count in counts_target.values())
    return shared / math.sqrt(norm_pred * norm_target)


def score(pred: Structure, target: Structure, *, length: int | None = None) -> dict[str, float]:
    """RnaBench's eight per-sequence folding metrics, keyed and ordered as :data:`METRICS`.

    ``pred`` and ``target``: :class:`BasePairs`, 0-based ``(i, j)`` pairs (give ``length`` if
    neither argument carries it) or ``(L, L)`` 0/1 matrices, of which the cells above the diagonal
    are taken as the pairs, as the original hands predictions to RnaBench. Several partners per
    base are fine. Values are Python floats; ``f1_shifted`` is NaN when neither has a pair.

    >>> score([(0, 4)], [(0, 4)], length=5)["solved"]
    1.0
    """
    pred_matrix, target_matrix = _matrices(pred, target, length)
    scores = count_metrics(pred_matrix, target_matrix)
    scores["weisfeiler_lehman"] = weisfeiler_lehman(pred_matrix, target_matrix)
    scores["solved"] = float(np.array_equal(pred_matrix, target_matrix))
    scores["f1_shifted"] = shifted_f1(pred_matrix, target_matrix)
    return {name: scores[name] for name in METRICS}


def f1_score(pred: Structure, target: Structure, *, length: int | None = None) -> float:
    """``score(pred, target)["f1_score"]`` alone, without the other metrics (for threshold sweeps)."""
    return count_metrics(*_matrices(pred, target, length))["f1_score"]


def is_scored(reference: BasePairs) -> bool:
    """Whether RnaBench's folding benchmark scores this reference: only if it has a pair."""
    return len(reference.pairs) > 0


def mean_scores(per_sequence: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The benchmark's average: NaN counts as 0, then the plain mean over sequences.

    >>> mean_scores([{"f1_shifted": float("nan")}, {"f1_shifted": 1.0}])
    {'f1_shifted': 0.5}
    """
    rows = list(per_sequence)
    if not rows:
        raise ValueError("no scores to average")
    names = [name for name in METRICS if name in rows[0]] or list(rows[0])
    return {
        name: sum(0.0 if math.isnan(row[name]) else row[name] for row in rows) / len(rows)
        for name in names
    }
