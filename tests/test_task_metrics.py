"""Fine-tuning metrics against definitions worked out by hand."""

import itertools

import numpy as np
import pytest

from protrna.task_metrics import average_ranks, classification_metrics, regression_metrics


def test_macro_f1_counts_classes_seen_in_truth_or_predictions():
    # Class "c" is never true nor predicted: left out of the macro average (scikit-learn's rule).
    m = classification_metrics([0, 0, 1, 1, 3], [0, 1, 1, 1, 0], ["a", "b", "c", "d"])
    f1 = {"a": 2 * 1 / (2 + 2), "b": 2 * 2 / (2 + 3), "d": 0.0}
    assert m["macro_f1"] == pytest.approx(sum(f1.values()) / 3)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["per_class"]["c"] == {"f1": 0.0, "support": 0}
    assert m["confusion"][0] == [1, 1, 0, 0] and m["confusion"][3] == [1, 0, 0, 0]


def test_spearman_is_the_pearson_correlation_of_average_ranks():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 30).astype(float)  # many ties
    y = x + rng.normal(0, 1.5, 30)
    rx = np.array([np.mean([k + 1 for k, v in enumerate(sorted(x)) if v == value]) for value in x])
    np.testing.assert_allclose(average_ranks(x), rx)
    ry = average_ranks(y)
    expected = np.corrcoef(rx, ry)[0, 1]
    assert regression_metrics(x, y)["spearman"] == pytest.approx(expected)
    assert regression_metrics(x, y)["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1])


def test_r2_and_degenerate_cases():
    assert regression_metrics([1, 2, 3], [1, 2, 3])["r2"] == 1.0
    assert regression_metrics([2, 2, 2], [2, 2, 2])["r2"] == 1.0
    constant = regression_metrics([2, 2, 2], [1, 2, 3])
    assert constant["r2"] == 0.0 and constant["spearman"] == 0.0
    truth, guess = [3.0, -0.5, 2.0, 7.0], [2.5, 0.0, 2.0, 8.0]
    mean = np.mean(truth)
    expected = 1 - sum((t - g) ** 2 for t, g in zip(truth, guess)) / sum((t - mean) ** 2 for t in truth)
    assert regression_metrics(truth, guess)["r2"] == pytest.approx(expected)


def test_ranks_of_every_permutation_of_a_tied_list():
    for values in itertools.permutations([1, 1, 2, 3, 3, 3]):
        ranks = dict(zip(values, average_ranks(values)))
        assert ranks == {1: 1.5, 2: 3.0, 3: 5.0}
