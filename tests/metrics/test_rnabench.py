"""The ``rnabench`` protocol against RnaBench 0.1.2 itself.

``tests/fixtures/rnabench/expected.json`` holds what RnaBench's own code computed for the cases of
``cases.json`` (made by the two scripts beside them; RnaBench is not installed here): per-sample
metrics for 350 cases, and a run of ``RnaFoldingBenchmark`` on all of them.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from protrna.evaluate import score_predictions
from protrna.metrics import get_protocol, rnabench
from protrna.structure import BasePairs, StructureRecord

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "rnabench"


@pytest.fixture(scope="module")
def fixture():
    cases = json.loads((FIXTURE / "cases.json").read_text())["cases"]
    expected = json.loads((FIXTURE / "expected.json").read_text())
    return cases, expected


def _close(got: float, want: float | None) -> bool:
    if want is None:  # RnaBench's NaN
        return math.isnan(got)
    return abs(got - want) <= 1e-9


def test_every_case_matches_rnabench_to_1e9(fixture):
    cases, expected = fixture
    assert expected["versions"]["RnaBench"] == "0.1.2" and len(cases) == 350
    assert tuple(expected["metrics"]) == rnabench.METRICS
    kinds = {case["kind"] for case in cases}
    assert kinds == {"ts0_rnafold", "ts0_noisy", "random", "pseudoknot", "empty", "multiplet", "edge"}
    for case in cases:
        got = rnabench.score(case["prediction"], case["reference"], length=case["length"])
        want = expected["per_case"][case["id"]]
        assert list(got) == list(rnabench.METRICS)
        wrong = {name: (got[name], want[name]) for name in got if not _close(got[name], want[name])}
        assert not wrong, f"{case['id']}: {wrong}"


def test_the_fixture_covers_the_corners(fixture):
    _, expected = fixture
    values = expected["per_case"]
    assert values["multiplet_014"]["f1_shifted"] == pytest.approx(1.6)  # one pair next to four
    assert values["empty_000"]["f1_shifted"] is None  # 0 / 0 in e2efold's formula
    assert sum(v["solved"] for v in values.values()) >= 3
    assert any(v["weisfeiler_lehman"] == 1.0 for v in values.values())


def test_matrices_are_read_as_the_original_hands_them_over(fixture):
    cases, expected = fixture
    case = next(c for c in cases if c["kind"] == "ts0_noisy")
    length = case["length"]
    upper_only = np.zeros((length, length), dtype=bool)
    for i, j in case["prediction"]:
        upper_only[i, j] = True
    upper_only[np.diag_indices(length)] = True  # the original takes triu(k=1): the diagonal never counts
    got = rnabench.score(upper_only, BasePairs(length, case["reference"]))
    want = expected["per_case"][case["id"]]
    assert all(_close(got[name], want[name]) for name in rnabench.METRICS)

    import torch

    symmetric = BasePairs(length, case["prediction"]).to_matrix(dtype=bool)
    assert rnabench.score(torch.from_numpy(symmetric), case["reference"]) == got


def test_evaluation_keeps_scores_and_averages_as_the_benchmark(fixture):
    """The benchmark's own run: which records it scored, their values, and its (rounded) means."""
    cases, expected = fixture
    bench = expected["benchmark"]
    references = [
        StructureRecord(c["id"], c["sequence"], BasePairs(c["length"], c["reference"])) for c in cases
    ]
    predictions = {c["id"]: BasePairs(c["length"], c["prediction"]) for c in cases}
    result = score_predictions(references, predictions, predictor="cases", protocol="rnabench")
    assert [row["id"] for row in result.rows] == bench["scored_ids"]
    assert result.n == len(bench["scored_ids"]) == 341
    assert result.summary()["protocol"] == "rnabench" and result.settings["protocol"].startswith("rnabench:")
    assert sorted(result.settings["left_out_without_pairs"]) == sorted(
        c["id"] for c in cases if c["id"] not in set(bench["scored_ids"]))
    for row in result.rows:
        want = bench["per_sample"][row["id"]]
        assert all(_close(row[name], want[name]) for name in rnabench.METRICS), row["id"]
    for name, value in result.means.items():
        assert abs(value - bench["means_rounded_3"][name]) <= 5e-4 + 1e-12, name


def test_hand_worked_case():
    # L = 8, reference (1,8) (2,7), prediction (1,8) (3,7): in the full symmetric 8 x 8 matrix
    # tp = 2, fp = 2, fn = 2, tn = 58 (the 8 diagonal cells included).
    got = rnabench.score([(0, 7), (2, 6)], [(0, 7), (1, 6)], length=8)
    assert got["f1_score"] == pytest.approx(4 / 8, abs=1e-8)
    assert got["specificity"] == pytest.approx(58 / 60, abs=1e-8)
    assert got["mcc"] == pytest.approx((2 * 58 - 2 * 2) / math.sqrt(4 * 4 * 60 * 60), abs=1e-8)
    assert got["f1_shifted"] == 1.0 and got["solved"] == 0.0
    # WL, 8 bases x 6 levels: all agree at level 0; from level 1 on 0 and 7 (paired alike), and
    # 3, 4, 5 (never paired) agree, while 1, 2 and 6 (partners differ) do not.
    assert got["weisfeiler_lehman"] == pytest.approx((8 + 5 * 5) / 48)


def test_mean_turns_nan_into_zero_and_refuses_nothing():
    assert rnabench.mean_scores([{"f1_shifted": math.nan}, {"f1_shifted": 0.5}]) == {"f1_shifted": 0.25}
    with pytest.raises(ValueError, match="no scores"):
        rnabench.mean_scores([])
    assert not rnabench.is_scored(BasePairs(5)) and rnabench.is_scored(BasePairs(5, [(0, 4)]))
    assert get_protocol("rnabench").mean_scores is rnabench.mean_scores


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="threshold probabilities first"):
        rnabench.score(np.full((4, 4), 0.3), BasePairs(4))
    with pytest.raises(ValueError, match="give the sequence length"):
        rnabench.score([(0, 3)], [(0, 3)])
    with pytest.raises(ValueError, match="5 nt long but target is 4"):
        rnabench.score(BasePairs(5), BasePairs(4))
    with pytest.raises(ValueError, match="unknown scoring protocol 'x'; known: protrna, rnabench"):
        get_protocol("x")


@pytest.mark.parametrize("name", ["protrna", "rnabench"])
def test_the_sweeps_f1_is_the_protocols_f1(fixture, name):
    cases, _ = fixture
    protocol = get_protocol(name)
    for case in cases[::7]:
        pred = BasePairs(case["length"], case["prediction"]).to_matrix(dtype=bool)
        target = BasePairs(case["length"], case["reference"]).to_matrix(dtype=bool)
        assert protocol.f1_only(pred, target) == protocol.score(pred, target)[protocol.f1], case["id"]
