"""How sure a predictor is of a structure, from its pair probabilities, and whether that is right.

For one RNA of length ``L`` with a symmetric pair-probability matrix ``P`` (the head's
``sigmoid`` map, or a partition function's base-pair probabilities) and a predicted structure
``S`` (its pairs ``i < j``):

* pairing probability of base ``i``: ``p(i) = sum_{j != i} P[i, j]``; the table keeps its mean
  over the bases (``mean_pairing_probability``). For a partition function ``p(i) <= 1`` (the rest
  is the chance that ``i`` stays unpaired); the head's sigmoids are independent, so for the model
  ``p(i)`` can exceed 1.
* expected true positives ``E[TP] = sum_{(i, j) in S} P[i, j]``
* expected number of true pairs ``E[N] = sum_{i < j} P[i, j]``
* expected precision ``E[TP] / |S|`` (the mean probability of the predicted pairs),
  expected recall ``E[TP] / E[N]``, and the F1 that follows from them,
  ``expected F1 = 2 E[TP] / (|S| + E[N])``. Each is 0 where its denominator is 0, as the strict
  scores are.

These are what the scores would be on average *if* each ``P[i, j]`` were the calibrated
probability that ``(i, j)`` is a reference pair and the pairs were independent; the F1 is a ratio
of expectations, not the expectation of the per-structure F1. Neither assumption holds exactly,
so how well expected F1 follows the real one is measured, not assumed: :func:`correlation`
(Pearson and Spearman over a set) and :class:`Reliability` (binned pair probabilities against the
fraction of them that are reference pairs). ``protrna evaluate --report`` prints both, and
``protrna fold`` writes :class:`ConfidenceTable` (``confidence.tsv``) beside its predictions.

Long RNAs folded in windows come as :class:`~protrna.sparse_pairs.SparsePairProbabilities`: ``P``
is then zero for the pairs that were not predicted (``j - i >= max_span``), ``E[N]`` and ``p(i)``
are its exact sums over every predicted pair (kept when the list is made), and ``E[TP]`` sums the
listed pairs of ``S`` (a predicted pair at or below the list's floor counts 0).

>>> P = np.zeros((6, 6)); P[0, 5] = P[5, 0] = 0.9; P[1, 4] = P[4, 1] = 0.5
>>> estimate = expected_accuracy(P, BasePairs(6, [(0, 5)]))
>>> round(estimate.expected_precision, 3), round(estimate.expected_recall, 3), round(estimate.expected_f1, 3)
(0.9, 0.643, 0.75)
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from .runtime.resume import LineJournal, partial_path
from .sparse_pairs import SparsePairProbabilities
from .structure import BasePairs

logger = logging.getLogger(__name__)

#: Columns of a confidence table, in order (``id`` and ``length`` first).
CONFIDENCE_COLUMNS: tuple[str, ...] = (
    "predicted_pairs", "expected_precision", "expected_recall", "expected_f1", "mean_pairing_probability",
)


def _where(source: str) -> str:
    return f"{source}: " if source else ""


def check_probabilities(probabilities: np.ndarray, source: str = "") -> np.ndarray:
    """``probabilities`` as a float64 ``(L, L)`` array, checked: square, finite, in [0, 1] and
    symmetric (to 1e-5). Raises ``ValueError`` naming ``source`` and the first bad cell."""
    matrix = np.asarray(probabilities, dtype=np.float64)
    where = _where(source)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{where}pair probabilities must be a square (L, L) matrix, got shape {matrix.shape}")
    bad = ~np.isfinite(matrix) | (matrix < -1e-6) | (matrix > 1 + 1e-6)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"{where}pair probability at ({i + 1}, {j + 1}) is {float(matrix[i, j])!r}, not in [0, 1]")
    asymmetric = np.abs(matrix - matrix.T) > 1e-5
    if asymmetric.any():
        i, j = np.argwhere(asymmetric)[0]
        raise ValueError(
            f"{where}pair probabilities are not symmetric: ({i + 1}, {j + 1}) is {matrix[i, j]:.6g}, "
            f"({j + 1}, {i + 1}) is {matrix[j, i]:.6g}"
        )
    return matrix


def pairing_probability(probabilities: np.ndarray | SparsePairProbabilities) -> np.ndarray:
    """Per base, the sum of its pair probabilities with every other base, shape ``(L,)``.

    >>> P = np.array([[0, .7, .2], [.7, 0, 0], [.2, 0, 0]])
    >>> pairing_probability(P).round(3).tolist()
    [0.9, 0.7, 0.2]
    """
    if isinstance(probabilities, SparsePairProbabilities):
        return probabilities.check().pairing.copy()
    matrix = check_probabilities(probabilities)
    return matrix.sum(axis=1) - np.diagonal(matrix)


@dataclasses.dataclass(frozen=True)
class Confidence:
    """Expected accuracy of one predicted structure (see the module doc for the formulas)."""

    predicted_pairs: int
    expected_precision: float
    expected_recall: float
    expected_f1: float
    mean_pairing_probability: float

    def as_dict(self) -> dict[str, float]:
        """Keyed as :data:`CONFIDENCE_COLUMNS`."""
        return {name: getattr(self, name) for name in CONFIDENCE_COLUMNS}


def expected_accuracy(
    probabilities: np.ndarray | SparsePairProbabilities, pairs: BasePairs | np.ndarray, *, source: str = ""
) -> Confidence:
    """Expected precision, recall and F1 of ``pairs`` under ``probabilities`` (module doc).

    ``pairs`` is a :class:`BasePairs` or a 0/1 ``(L, L)`` matrix (as the model's thresholded map,
    several partners per base allowed; either triangle counts). ``probabilities``: a symmetric
    ``(L, L)`` matrix or the pair list of a long RNA.
    """
    if isinstance(probabilities, SparsePairProbabilities):
        length = probabilities.check(source).length
    else:
        matrix = check_probabilities(probabilities, source)
        length = matrix.shape[0]
    if not isinstance(pairs, BasePairs):
        pairs = BasePairs.from_matrix(np.asarray(pairs))
    if pairs.length != length:
        raise ValueError(f"{_where(source)}structure is for {pairs.length} nt, probabilities for {length} nt")
    predicted = len(pairs.pairs)
    if isinstance(probabilities, SparsePairProbabilities):
        true_positives = float(probabilities.lookup(pairs.pairs).sum())
        expected_pairs = probabilities.expected_pairs
        pairing = probabilities.pairing
    else:
        true_positives = float(matrix[pairs.pairs[:, 0], pairs.pairs[:, 1]].sum()) if predicted else 0.0
        expected_pairs = float(np.triu(matrix, k=1).sum())
        pairing = matrix.sum(axis=1) - np.diagonal(matrix)
    return Confidence(
        predicted_pairs=predicted,
        expected_precision=true_positives / predicted if predicted else 0.0,
        expected_recall=true_positives / expected_pairs if expected_pairs > 0 else 0.0,
        expected_f1=2 * true_positives / (predicted + expected_pairs) if predicted + expected_pairs > 0 else 0.0,
        mean_pairing_probability=float(pairing.mean()) if length else 0.0,
    )


# --- is the confidence right? -----------------------------------------------------------------


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given their mean rank (as ``scipy.stats.rankdata``'s default)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start of each run of equal values, and the mean rank of the run.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2  # ranks starts+1 .. ends
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / denominator if denominator > 0 else math.nan


def correlation(expected: Sequence[float], actual: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation of ``expected`` with ``actual`` (e.g. F1 over a set).

    Through ``scipy.stats`` when it is installed, otherwise the same definitions in numpy
    (Spearman: Pearson of the ranks, ties at their mean rank). NaN where a side is constant or
    there are fewer than 2 values. Returns ``{"n", "pearson", "spearman"}``.

    >>> {k: round(v, 4) for k, v in correlation([0.1, 0.2, 0.3, 0.4], [0.2, 0.1, 0.5, 0.9]).items()}
    {'n': 4, 'pearson': 0.898, 'spearman': 0.8}
    """
    x, y = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"expected and actual must be two equally long lists, got shapes {x.shape} and {y.shape}")
    result = {"n": int(len(x)), "pearson": math.nan, "spearman": math.nan}
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return result
    try:
        from scipy import stats
    except ImportError:
        result["pearson"] = _pearson(x, y)
        result["spearman"] = _pearson(_ranks(x), _ranks(y))
    else:
        result["pearson"] = float(stats.pearsonr(x, y)[0])
        result["spearman"] = float(stats.spearmanr(x, y)[0])
    return result


class Reliability:
    """Pair-level calibration: cells ``i < j`` binned by probability, with how many of them are
    reference pairs. A calibrated predictor's bins have ``fraction_true ~= mean_probability``.

    :meth:`expected_calibration_error` is the cell-weighted mean of ``|fraction_true -
    mean_probability|`` over the bins. Nearly all cells fall in the first bin, with probabilities
    near 0 and almost no reference pairs, which makes the plain ECE small for any predictor;
    ``from_probability=0.1`` leaves that bin out and weighs only the cells a predictor gives some
    chance of pairing.

    >>> bins = Reliability(bins=2)
    >>> P = np.zeros((4, 4)); P[0, 3] = P[3, 0] = 0.8
    >>> bins.add(P, BasePairs(4, [(0, 3)]))
    >>> [(row["cells"], row["true_pairs"]) for row in bins.table()]
    [(5, 0), (1, 1)]
    """

    def __init__(self, bins: int = 10):
        if bins < 1:
            raise ValueError(f"bins must be at least 1, not {bins}")
        self.edges = np.linspace(0.0, 1.0, bins + 1)
        self.cells = np.zeros(bins, dtype=np.int64)
        self.true_pairs = np.zeros(bins, dtype=np.int64)
        self.probability_sum = np.zeros(bins, dtype=np.float64)

    def add(self, probabilities: np.ndarray, reference: BasePairs) -> None:
        """Count the upper-triangle cells of one RNA."""
        matrix = check_probabilities(probabilities)
        rows, cols = np.triu_indices(matrix.shape[0], k=1)
        values = np.clip(matrix[rows, cols], 0.0, 1.0)
        truth = np.zeros(matrix.shape, dtype=bool)
        truth[reference.pairs[:, 0], reference.pairs[:, 1]] = True
        which = np.minimum(np.searchsorted(self.edges, values, side="right") - 1, len(self.cells) - 1)
        self.cells += np.bincount(which, minlength=len(self.cells))
        self.true_pairs += np.bincount(which, weights=truth[rows, cols], minlength=len(self.cells)).astype(np.int64)
        self.probability_sum += np.bincount(which, weights=values, minlength=len(self.cells))

    def table(self) -> list[dict]:
        """One dict per bin: ``low``, ``high``, ``cells``, ``true_pairs``, ``mean_probability``,
        ``fraction_true`` (the last two NaN for an empty bin)."""
        rows = []
        for k, cells in enumerate(self.cells):
            rows.append({
                "low": float(self.edges[k]), "high": float(self.edges[k + 1]), "cells": int(cells),
                "true_pairs": int(self.true_pairs[k]),
                "mean_probability": float(self.probability_sum[k] / cells) if cells else math.nan,
                "fraction_true": float(self.true_pairs[k] / cells) if cells else math.nan,
            })
        return rows

    def expected_calibration_error(self, from_probability: float = 0.0) -> float:
        """Cell-weighted mean gap between fraction true and mean probability, over the bins that
        start at ``from_probability`` or above (NaN if they hold no cell)."""
        filled = (self.cells > 0) & (self.edges[:-1] >= from_probability - 1e-12)
        total = int(self.cells[filled].sum())
        if not total:
            return math.nan
        gap = np.abs(self.true_pairs[filled] / self.cells[filled] - self.probability_sum[filled] / self.cells[filled])
        return float((gap * self.cells[filled]).sum() / total)


# --- the table `protrna fold` writes ----------------------------------------------------------


def _fields(row: Mapping) -> list[str]:
    """A confidence row (``id``, ``length`` and :data:`CONFIDENCE_COLUMNS`) as TSV fields."""
    return [row["id"], str(row["length"]), str(row["predicted_pairs"])] + [
        f"{row[name]:.6f}" for name in CONFIDENCE_COLUMNS[1:]
    ]


def _tsv_line(fields: Sequence[str]) -> str:
    text = io.StringIO()
    csv.writer(text, delimiter="\t", lineterminator="").writerow(fields)
    return text.getvalue()


def _rows_of(journal: LineJournal) -> dict[str, dict]:
    """The complete rows of a ``confidence.tsv.partial``; a torn last line is cut off the file."""
    if not journal.exists():
        return {}
    with open(journal.path, encoding="utf-8", newline="") as handle:
        if next(csv.reader(handle, delimiter="\t"), None) != ["id", "length", *CONFIDENCE_COLUMNS]:
            raise ValueError(f"{journal.path}: not a confidence table")
    rows: dict[str, dict] = {}

    def parsed(lines: list[str]) -> bool:
        row = _parse_row(next(csv.reader([lines[0]], delimiter="\t")))
        if row is not None:
            rows[row["id"]] = row  # a record written again after a resume: the last one counts
        return row is not None

    journal.read(parsed)
    return rows


def _parse_row(fields: list[str]) -> dict | None:
    if len(fields) != 2 + len(CONFIDENCE_COLUMNS):
        return None
    try:
        row = {"id": fields[0], "length": int(fields[1]), "predicted_pairs": int(fields[2])}
        row.update({name: float(value) for name, value in zip(CONFIDENCE_COLUMNS[1:], fields[3:])})
    except ValueError:
        return None
    return row


def read_confidence_table(path: str | Path) -> dict[str, dict]:
    """Rows of a ``confidence.tsv`` (or its ``.partial``) by id; a torn last line is ignored."""
    rows: dict[str, dict] = {}
    path = Path(path)
    if not path.exists():
        return rows
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader, None)
        if header != ["id", "length", *CONFIDENCE_COLUMNS]:
            raise ValueError(f"{path}: not a confidence table (header {header})")
        for fields in reader:
            row = _parse_row(fields)
            if row is None:
                break
            rows[fields[0]] = row  # a record written again after a resume: the last one counts
    return rows


class ConfidenceTable:
    """``confidence.tsv`` of a fold run, kept through interruptions like ``predictions.dbn``.

    Rows are appended to ``confidence.tsv.partial`` as records are folded (call :meth:`add`
    *before* the record reaches ``predictions.dbn.partial``, so that a kill never leaves a folded
    record without its row) and :meth:`finish` writes them in input order. Columns: ``id``,
    ``length``, then :data:`CONFIDENCE_COLUMNS`.
    """

    def __init__(self, output_dir: str | Path, name: str = "confidence.tsv"):
        self.path = Path(output_dir) / name
        self.partial = partial_path(self.path)
        self.rows = read_confidence_table(self.path)
        journal = LineJournal(self.partial, header_lines=1)
        self.rows.update(_rows_of(journal))
        # Rewritten whole: a torn last line disappears, the rows kept so far stay.
        journal.start([_tsv_line(("id", "length") + CONFIDENCE_COLUMNS)],
                      ([_tsv_line(_fields(row))] for row in self.rows.values()))
        self._sink = journal.appending()

    def add(
        self, record_id: str, probabilities: np.ndarray | SparsePairProbabilities, pairs: BasePairs
    ) -> Confidence:
        """Estimate the confidence of one folded record and append its row (flushed)."""
        confidence = expected_accuracy(probabilities, pairs, source=f"record {record_id!r}")
        self.rows[record_id] = {"id": record_id, "length": pairs.length, **confidence.as_dict()}
        self._sink.append([_tsv_line(_fields(self.rows[record_id]))])
        return confidence

    def close(self) -> None:
        self._sink.close()

    def finish(self, ids: Iterable[str]) -> Path:
        """Write ``confidence.tsv`` with the rows of ``ids`` in that order and drop the partial
        file. Records folded by a version without this table have no row: they are left out,
        with a warning."""
        self.close()
        ids = list(ids)
        missing = [i for i in ids if i not in self.rows]
        if missing:
            logger.warning("%s: %d records have no confidence row (folded before it was written, e.g. %r); "
                           "fold into a new directory to have them", self.path, len(missing), missing[0])
        lines = [_tsv_line(("id", "length") + CONFIDENCE_COLUMNS)]
        lines += [_tsv_line(_fields(self.rows[i])) for i in ids if i in self.rows]
        LineJournal(self.partial).finish(self.path, "".join(line + "\n" for line in lines))
        return self.path

    def __enter__(self) -> "ConfidenceTable":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

