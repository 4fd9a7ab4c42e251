import numpy as np
import pytest

from protrna.metrics import METRICS, mean_scores, relax, score, shifted_f1
from protrna.structure import BasePairs


@pytest.fixture(scope="module")
def cases(parity_dir):
    data = np.load(parity_dir / "metrics_cases.npz")
    assert tuple(data["columns"]) == METRICS
    n = int(data["n"])
    return [(data[f"pred_{k}"], data[f"target_{k}"], data["expected"][k]) for k in range(n)]


def test_matches_the_original_on_every_fixture_case(cases):
    assert len(cases) == 40
    for k, (pred, target, expected) in enumerate(cases):
        got = score(pred, target)
        assert list(got) == list(METRICS)
        np.testing.assert_allclose(
            [got[name] for name in METRICS], expected, rtol=0, atol=1e-9, err_msg=f"case {k}"
        )


def test_pair_lists_score_like_the_matrices_they_make(cases):
    for pred, target, expected in cases:
        as_pairs = score(BasePairs.from_matrix(pred), BasePairs.from_matrix(target).to_list())
        np.testing.assert_allclose([as_pairs[name] for name in METRICS], expected, rtol=0, atol=1e-9)


def test_torch_matrices_and_pair_arrays_score_like_numpy(cases):
    import torch

    pred, target, expected = cases[0]
    from_torch = score(torch.from_numpy(pred) > 0, torch.from_numpy(target).float())
    np.testing.assert_allclose([from_torch[name] for name in METRICS], expected, rtol=0, atol=1e-9)
    pairs = np.array(BasePairs.from_matrix(target).to_list())  # (n, 2), not a matrix
    assert pairs.shape[0] != 2
    assert score(pairs, target) == score(BasePairs.from_matrix(target), target)


def test_small_case_worked_by_hand():
    # L = 8: 28 lower-triangle cells. Reference (1,8) (2,7); prediction (1,8) (3,7).
    # tp = 1, fp = 1, fn = 1, tn = 25. (3,7) is one step from (2,7): the shifted F1 is perfect.
    got = score([(0, 7), (2, 6)], [(0, 7), (1, 6)], length=8)
    assert got["precision"] == got["recall"] == got["f1"] == 0.5
    assert got["accuracy"] == pytest.approx(26 / 28)
    assert got["mcc"] == pytest.approx((1 * 25 - 1 * 1) / np.sqrt(2 * 2 * 26 * 26))
    assert got["f1_shifted"] == 1.0


def test_zero_division_conventions():
    empty = BasePairs(10)
    one = BasePairs(10, [(0, 9)])
    assert score(empty, empty) == {"f1": 0.0, "mcc": 0.0, "precision": 0.0, "recall": 0.0,
                                   "accuracy": 1.0, "f1_shifted": 0.0}
    nothing_found = score(empty, one)
    assert nothing_found["recall"] == nothing_found["precision"] == nothing_found["mcc"] == 0.0
    assert score(BasePairs(1), BasePairs(1))["accuracy"] == 1.0  # no cell at all


def test_shifted_f1_reaches_one_step_only():
    target = BasePairs(20, [(2, 15)])
    for pred, expected in [((3, 15), 1.0), ((2, 14), 1.0), ((1, 15), 1.0), ((2, 16), 1.0),
                           ((3, 16), 0.0), ((4, 15), 0.0), ((2, 15), 1.0)]:
        got = shifted_f1(BasePairs(20, [pred]).to_matrix(dtype=bool), target.to_matrix(dtype=bool))
        assert got == expected, pred


def test_relax_does_not_wrap_around():
    matrix = np.zeros((5, 5), dtype=bool)
    matrix[0, 4] = True
    relaxed = relax(matrix)
    assert relaxed.sum() == 3 and relaxed[0, 4] and relaxed[0, 3] and relaxed[1, 4]


def test_refuses_probabilities_and_mismatched_lengths():
    with pytest.raises(ValueError, match="threshold probabilities first"):
        score(np.full((4, 4), 0.3), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="5 nt long but target is 4"):
        score(BasePairs(5), BasePairs(4))
    with pytest.raises(ValueError, match="give the sequence length"):
        score([(0, 3)], [(0, 3)])
    with pytest.raises(ValueError, match="pred is for 5 nt, but length=6"):
        score(BasePairs(5), BasePairs(5), length=6)


def test_mean_scores_is_the_plain_mean():
    target = BasePairs(6, [(0, 5)])
    rows = [score(target, target), score(BasePairs(6), target)]
    means = mean_scores(rows)
    assert list(means) == list(METRICS)
    assert means["f1"] == 0.5 and means["recall"] == 0.5
    with pytest.raises(ValueError, match="no scores"):
        mean_scores([])
