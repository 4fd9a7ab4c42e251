"""Scores of fine-tuned sequence and per-nucleotide tasks (``protrna finetune``).

Plain numpy, with scikit-learn's / SciPy's definitions:

* classification: ``accuracy``; ``macro_f1`` = unweighted mean of the per-class F1 over the
  classes that occur in the true *or* the predicted labels (scikit-learn's default), F1 = 0 for a
  class with no true and no correct prediction; per-class F1 and support; the confusion matrix
  (rows: true class, columns: predicted class).
* regression: ``mse``; ``r2`` = 1 - SS_res / SS_tot (1 if both are 0, else 0 when SS_tot = 0);
  ``pearson``; ``spearman`` = Pearson correlation of the ranks, ties given their average rank;
  a correlation is 0 where a side is constant.

Per-nucleotide classification is scored as classification over all nucleotides pooled.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def classification_metrics(true: Sequence[int], predicted: Sequence[int], labels: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-class F1/support and confusion matrix; labels are class indices.

    >>> m = classification_metrics([0, 0, 1, 2], [0, 1, 1, 1], ["a", "b", "c"])
    >>> m["accuracy"], round(m["macro_f1"], 4), m["per_class"]["c"]
    (0.5, 0.3889, {'f1': 0.0, 'support': 1})
    """
    true, predicted = np.asarray(true, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    if true.shape != predicted.shape or true.size == 0:
        raise ValueError(f"need as many predictions as labels, and some: {true.shape} vs {predicted.shape}")
    k = len(labels)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (true, predicted), 1)
    tp = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted_count = confusion.sum(axis=0)
    denominator = support + predicted_count
    f1 = np.divide(2 * tp, denominator, out=np.zeros(k), where=denominator > 0)
    present = denominator > 0
    return {
        "n": int(true.size),
        "accuracy": float((true == predicted).mean()),
        "macro_f1": float(f1[present].mean()),
        "per_class": {label: {"f1": float(f1[i]), "support": int(support[i])} for i, label in enumerate(labels)},
        "confusion": confusion.tolist(),
    }


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks.

    >>> average_ranks([10, 20, 10, 30]).tolist()
    [1.5, 3.0, 1.5, 4.0]
    """
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    # Start of each run of equal values, and the mean rank of that run.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # ranks are 1-based: (start+1 + end) / 2
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    scale = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / scale) if scale > 0 else 0.0


def regression_metrics(true: Sequence[float], predicted: Sequence[float]) -> dict:
    """MSE, R^2, Pearson and Spearman correlation.

    >>> m = regression_metrics([1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.5, 5.0])
    >>> m["mse"], m["r2"], m["spearman"]
    (0.375, 0.7, 1.0)
    """
    true, predicted = np.asarray(true, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    if true.shape != predicted.shape or true.size == 0:
        raise ValueError(f"need as many predictions as labels, and some: {true.shape} vs {predicted.shape}")
    residual = float(((true - predicted) ** 2).sum())
    total = float(((true - true.mean()) ** 2).sum())
    r2 = 1.0 - residual / total if total > 0 else (1.0 if residual == 0 else 0.0)
    return {
        "n": int(true.size),
        "mse": residual / true.size,
        "r2": r2,
        "pearson": _pearson(true, predicted),
        "spearman": _pearson(average_ranks(true), average_ranks(predicted)),
    }
