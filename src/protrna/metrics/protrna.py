"""The ``protrna`` protocol: per-sequence scores exactly as the original ``test_downstream_ss.py``
computes them (the RnaBench protocol is :mod:`protrna.metrics.rnabench`).

Two families, both on symmetric 0/1 pair matrices:

* strict ``f1``, ``mcc``, ``precision``, ``recall``, ``accuracy``: every cell of the strictly
  lower triangle is one binary sample, scored with scikit-learn's definitions. Where a ratio is
  0/0 the original's scikit-learn returns 0 (``zero_division="warn"``) and MCC returns 0; an
  empty triangle (L < 2) is scored here as "no pairs either side": accuracy 1, the rest 0.
* ``f1_shifted`` (RiNALMo's protocol): on the upper triangle, recall counts a reference pair as
  found when the prediction has a pair at most one step away in i or in j; precision counts a
  predicted pair as right when the reference has one within that reach;
  ``F1 = 2PR / (P + R)``, 0 when ``P + R < 1e-5``.

Always say which F1 a number is: strict (most papers) or shifted (RiNALMo, AIDO.RNA).
Plain numpy: the counts below give the same numbers as scikit-learn (checked against the
original to 1e-9 in ``tests/metrics/test_protrna.py``).

>>> from protrna.structure import BasePairs
>>> target = BasePairs(8, [(0, 7), (1, 6)])
>>> pred = BasePairs(8, [(0, 7), (2, 6)])
>>> {name: round(value, 3) for name, value in score(pred, target).items()}
{'f1': 0.5, 'mcc': 0.462, 'precision': 0.5, 'recall': 0.5, 'accuracy': 0.929, 'f1_shifted': 1.0}
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence, Union

import numpy as np

from ..structure import BasePairs

#: Metric names in the order the original prints them.
METRICS: tuple[str, ...] = ("f1", "mcc", "precision", "recall", "accuracy", "f1_shifted")

#: Below this P + R the shifted F1 is 0 (the original's guard against 0/0).
SHIFTED_F1_EPSILON = 1e-5

#: A structure to score: an ``(L, L)`` 0/1 matrix, :class:`BasePairs`, or 0-based ``(i, j)`` pairs.
Structure = Union[np.ndarray, BasePairs, Sequence[Sequence[int]]]


def _is_matrix(structure: Structure) -> bool:
    return isinstance(structure, np.ndarray) and structure.ndim == 2 and (
        structure.shape[0] == structure.shape[1]
    )


def _as_matrix(structure: Structure, length: int | None, name: str) -> np.ndarray:
    """A bool ``(L, L)`` matrix; matrices are taken as given (the original does not symmetrize)."""
    if isinstance(structure, BasePairs):
        return structure.to_matrix(dtype=bool)
    if isinstance(structure, np.ndarray) and not _is_matrix(structure) and structure.ndim == 2 and (
        structure.shape[1] == 2
    ):
        structure = structure.tolist()  # an (n, 2) array of pairs, as BasePairs.to_list gives
    elif isinstance(structure, np.ndarray):
        if not _is_matrix(structure):
            raise ValueError(f"{name} must be a square (L, L) matrix, got shape {structure.shape}")
        if structure.dtype != bool and not np.isin(structure, (0, 1)).all():
            raise ValueError(
                f"{name} holds values other than 0 and 1; threshold probabilities first "
                "(protrna.structure.decode_matrix)"
            )
        return structure != 0
    if length is None:
        raise ValueError(f"{name} is a list of pairs: give the sequence length (length=...)")
    return BasePairs(length, structure).to_matrix(dtype=bool)


def _length_of(structure: Structure) -> int | None:
    if isinstance(structure, BasePairs):
        return structure.length
    return structure.shape[0] if _is_matrix(structure) else None


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def relax(matrix: np.ndarray) -> np.ndarray:
    """Cells that are set or have a set neighbour one step up, down, left or right (no wrap-around).

    >>> m = np.zeros((4, 4), dtype=bool); m[1, 2] = True
    >>> relax(m).astype(int).tolist()
    [[0, 0, 1, 0], [0, 1, 1, 1], [0, 0, 1, 0], [0, 0, 0, 0]]
    """
    matrix = np.asarray(matrix) != 0
    relaxed = matrix.copy()
    relaxed[1:, :] |= matrix[:-1, :]
    relaxed[:-1, :] |= matrix[1:, :]
    relaxed[:, 1:] |= matrix[:, :-1]
    relaxed[:, :-1] |= matrix[:, 1:]
    return relaxed


def strict_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """F1, MCC, precision, recall and accuracy over the strictly lower triangle of bool matrices."""
    rows, cols = np.tril_indices(pred.shape[0], k=-1)
    predicted, true = pred[rows, cols], target[rows, cols]
    tp = int(np.count_nonzero(predicted & true))
    fp = int(np.count_nonzero(predicted & ~true))
    fn = int(np.count_nonzero(~predicted & true))
    tn = len(true) - tp - fp - fn
    # scikit-learn's MCC is 0 whenever a marginal is empty (its covariance product is 0).
    marginals = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    mcc = (tp * tn - fp * fn) / math.sqrt(marginals) if marginals else 0.0
    return {
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "mcc": mcc,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "accuracy": _ratio(tp + tn, len(true)) if len(true) else 1.0,
    }


def shifted_f1(pred: np.ndarray, target: np.ndarray) -> float:
    """RiNALMo's F1 allowing a one-base shift, on the upper triangle of bool matrices."""
    rows, cols = np.triu_indices(pred.shape[0], k=1)
    predicted, true = pred[rows, cols], target[rows, cols]
    near_pred = relax(pred)[rows, cols]
    near_true = relax(target)[rows, cols]
    recall = _ratio(int(np.count_nonzero(true & near_pred)), int(np.count_nonzero(true)))
    precision = _ratio(
        int(np.count_nonzero(predicted & near_true)), int(np.count_nonzero(predicted))
    )
    if precision + recall < SHIFTED_F1_EPSILON:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def score(pred: Structure, target: Structure, *, length: int | None = None) -> dict[str, float]:
    """The six per-sequence metrics of the original protocol, keyed as in :data:`METRICS`.

    ``pred`` and ``target`` are each an ``(L, L)`` 0/1 numpy matrix, a :class:`BasePairs` or a
    list of 0-based ``(i, j)`` pairs (then ``L`` comes from the other argument or ``length``).
    Pairs are made into symmetric matrices; matrices are used as given, as the original does, so
    pass symmetric ones (the strict metrics read the lower triangle, the shifted F1 the upper).
    Several partners per base are fine: that is what the original scores.

    >>> score([(0, 4)], [(0, 4), (1, 3)], length=5)["recall"]
    0.5
    """
    # A torch tensor, e.g. sigmoid(logits) > 0.25 straight from the head, is scored as its array.
    pred, target = (x.detach().cpu().numpy() if hasattr(x, "detach") else x for x in (pred, target))
    for name, structure in (("pred", pred), ("target", target)):
        if length is not None and _length_of(structure) not in (None, length):
            raise ValueError(f"{name} is for {_length_of(structure)} nt, but length={length}")
    length = length if length is not None else (_length_of(pred) or _length_of(target))
    pred_matrix = _as_matrix(pred, length, "pred")
    target_matrix = _as_matrix(target, length, "target")
    if pred_matrix.shape != target_matrix.shape:
        raise ValueError(
            f"pred is {pred_matrix.shape[0]} nt long but target is {target_matrix.shape[0]} nt long"
        )
    scores = strict_scores(pred_matrix, target_matrix)
    scores["f1_shifted"] = shifted_f1(pred_matrix, target_matrix)
    return {name: scores[name] for name in METRICS}


def mean_scores(per_sequence: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Plain mean over sequences of each metric, as the original prints it.

    >>> mean_scores([{"f1": 1.0, "mcc": 1.0}, {"f1": 0.5, "mcc": 0.0}])
    {'f1': 0.75, 'mcc': 0.5}
    """
    rows = list(per_sequence)
    if not rows:
        raise ValueError("no scores to average")
    names = [name for name in METRICS if name in rows[0]] or list(rows[0])
    return {name: sum(row[name] for row in rows) / len(rows) for name in names}
