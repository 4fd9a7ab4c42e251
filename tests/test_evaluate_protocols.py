"""``protrna evaluate --protocol rnabench`` and ``--sweep``: outputs name the protocol, the model path
scores as the original's RnaBench script, the sweep picks the best threshold and saves a copy."""

import csv
import json

import numpy as np
import pytest
import torch

from protrna.evaluate import evaluate_predictor, format_table, score_predictions, sweep_threshold, write_scores_tsv
from protrna.metrics import rnabench
from protrna.structure import BasePairs, StructureRecord, read_reference, write_dbn


@pytest.fixture
def ts0_head(data_dir):
    return read_reference(data_dir / "bprna" / "TS0.dbn")[:6]


@pytest.fixture
def saved(tiny_model, tmp_path):
    from protrna.heads.ss import RotaFormer, RotaFormerConfig

    torch.manual_seed(3)
    head = RotaFormer(RotaFormerConfig(input_dim=tiny_model.embed_dim, num_blocks=1))
    head.save_pretrained(tmp_path / "head")
    return tiny_model.save_pretrained(tmp_path / "lm"), tmp_path / "head"


def _with_unpaired(records):
    """The records plus one reference without pairs, which RnaBench's benchmark leaves out."""
    return list(records) + [StructureRecord("unpaired", "ACGUACGUAC", BasePairs(10))]


def test_outputs_name_the_protocol(ts0_head, tmp_path):
    references = _with_unpaired(ts0_head)
    predictions = {r.id: BasePairs(len(r), r.pairs.to_list()[:3]) for r in references}
    result = score_predictions(references, predictions, predictor="mine", protocol="rnabench")
    assert result.n == 6 and result.settings["left_out_without_pairs"] == ["unpaired"]
    assert result.unmatched == []  # the left-out reference's prediction is not foreign
    assert result.summary()["protocol"] == "rnabench" and list(result.means) == list(rnabench.METRICS)
    table = format_table([result]).splitlines()
    assert table[0].split() == ["predictor", "n", *rnabench.METRICS]
    assert table[-1].startswith("protocol rnabench (RnaBench 0.1.2)")
    write_scores_tsv(result, tmp_path / "s.tsv")
    lines = (tmp_path / "s.tsv").read_text().splitlines()
    assert lines[0].startswith("# protocol: rnabench: RnaBench 0.1.2")
    assert lines[1].split("\t") == ["id", "length", *rnabench.METRICS] and len(lines) == 2 + 6
    default = score_predictions(references, predictions, predictor="mine")
    assert default.n == 7 and default.summary()["protocol"] == "protrna"
    assert format_table([default]).splitlines()[-1].startswith("protocol protrna")
    with pytest.raises(ValueError, match="different protocols"):
        format_table([result, default])


def test_model_scores_the_upper_triangle_as_the_original_hands_it_to_rnabench(ts0_head, tiny_model):
    from protrna.fold import StructurePredictor
    from protrna.heads.ss import RotaFormer, RotaFormerConfig

    torch.manual_seed(3)
    head = RotaFormer(RotaFormerConfig(input_dim=tiny_model.embed_dim, num_blocks=1)).eval()
    references = _with_unpaired(ts0_head)
    result = evaluate_predictor(references, StructurePredictor(tiny_model, head), threshold=0.5,
                                progress=False, protocol="rnabench")
    assert [row["id"] for row in result.rows] == [r.id for r in ts0_head]
    assert result.settings["left_out_without_pairs"] == ["unpaired"]
    for row, reference in zip(result.rows, ts0_head):
        with torch.no_grad():  # test_downstream_ss_rnabench.py: triu(sigmoid(logits) > t, k=1) as [i, j, 0]
            tokens = tiny_model.alphabet.get_batch_converter()([reference.sequence])
            reps = tiny_model(tokens, repr_layers=[2])["representations"][2]
            predicted = (torch.sigmoid(head(reps)) > 0.5).numpy()
        rows, cols = np.triu_indices(len(reference), k=1)
        pairs = [(i, j) for i, j in zip(rows, cols) if predicted[i, j]]
        expected = rnabench.score(pairs, reference.pairs.to_list(), length=len(reference))
        assert all(row[name] == pytest.approx(expected[name], abs=1e-12) for name in rnabench.METRICS)


@pytest.mark.parametrize("protocol", ["protrna", "rnabench"])
def test_sweep_picks_the_best_mean_f1_of_the_protocol(ts0_head, tiny_model, protocol):
    from protrna.fold import StructurePredictor
    from protrna.heads.ss import RotaFormer, RotaFormerConfig
    from protrna.metrics import get_protocol

    torch.manual_seed(3)
    head = RotaFormer(RotaFormerConfig(input_dim=tiny_model.embed_dim, num_blocks=1)).eval()
    predictor = StructurePredictor(tiny_model, head)
    grid = [0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7]
    summary = sweep_threshold(_with_unpaired(ts0_head), predictor, grid=grid, protocol=protocol, progress=False)
    # The curve computed here another way: the protocol's full score at each threshold.
    maps = {r.id: r.probabilities for r in predictor.predict([(r.id, r.sequence) for r in ts0_head])}
    scorer = get_protocol(protocol)
    key = scorer.f1
    kept = ts0_head if protocol == "rnabench" else _with_unpaired(ts0_head)
    if protocol == "protrna":
        maps["unpaired"] = next(iter(predictor.predict([("unpaired", "ACGUACGUAC")]))).probabilities
    curve = [np.mean([scorer.score(maps[r.id] > t, r.pairs)[key] for r in kept]) for t in grid]
    np.testing.assert_allclose(list(summary["curve"].values()), curve, atol=1e-12)
    assert summary["n"] == len(kept) and summary["protocol"] == protocol and summary["metric"] == key
    assert summary["curve"][str(summary["threshold"])] == max(curve)
    assert ("left_out_without_pairs" in summary) == (protocol == "rnabench")


def test_default_grid_is_the_originals():
    from protrna.train.ss import DEFAULT_GRID, threshold_grid

    grid = threshold_grid(*DEFAULT_GRID)
    np.testing.assert_allclose(grid, np.arange(0.1, 0.4, 0.01), atol=1e-12)  # the original's loop
    assert len(grid) == 31 and grid[0] == 0.1 and grid[-1] == 0.4  # arange's last value is 0.39999999999999997


def test_cli_sweep_writes_curve_plot_and_a_head_copy(saved, ts0_head, tmp_path, capsys):
    from protrna.cli import main
    from protrna.heads.ss import RotaFormer

    lm, head = saved
    head_before = {p.name: p.read_bytes() for p in head.iterdir()}
    reference, valid = tmp_path / "test.dbn", tmp_path / "valid.dbn"
    write_dbn(ts0_head[:3], reference)
    write_dbn(ts0_head[3:], valid)
    out = tmp_path / "sweep"
    args = ["evaluate", "--protocol", "rnabench", "--reference", str(reference), "--model", str(lm),
            "--head", str(head), "--sweep", str(valid), "--sweep-output", str(out),
            "--threshold-grid", "0.4", "0.6", "0.05", "--summary", str(tmp_path / "s.json"), "-q"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    curve = json.loads((out / "threshold_sweep.json").read_text())
    assert list(curve["curve"]) == ["0.4", "0.45", "0.5", "0.55", "0.6"] and curve["protocol"] == "rnabench"
    assert (out / "threshold_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved_head = RotaFormer.from_pretrained(out / "head")
    assert saved_head.config.threshold == curve["threshold"]
    assert json.loads((out / "head" / "threshold_sweep.json").read_text())["threshold"] == curve["threshold"]
    original = RotaFormer.from_pretrained(head)
    assert all(torch.equal(a, b) for a, b in zip(saved_head.state_dict().values(), original.state_dict().values()))
    assert {p.name: p.read_bytes() for p in head.iterdir()} == head_before  # the swept head is untouched
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["protocol"] == "rnabench" and summary["settings"]["threshold"] == curve["threshold"]
    assert summary["settings"]["threshold_sweep"]["valid"] == str(valid)
    assert f"threshold {curve['threshold']:g} chosen" in printed and "protocol rnabench" in printed

    # The saved copy evaluates with the chosen threshold by default.
    assert main(["evaluate", "--protocol", "rnabench", "--reference", str(reference), "--model", str(lm),
                 "--head", str(out / "head"), "--summary", str(tmp_path / "again.json"), "-q"]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["means"] == summary["means"]


@pytest.mark.parametrize("extra, message", [
    (["--sweep-output", "x"], "--sweep-output apply to --sweep"),
    (["--sweep", "v.dbn"], "--sweep needs --sweep-output DIR"),
    (["--sweep", "v.dbn", "--sweep-output", "x", "--threshold", "0.3"], "exclude each other"),
])
def test_cli_sweep_options_are_checked(ts0_head, tmp_path, capsys, extra, message):
    from protrna.cli import main

    reference = tmp_path / "ref.dbn"
    write_dbn(ts0_head, reference)
    assert main(["evaluate", "--reference", str(reference), *extra]) == 2
    assert message in capsys.readouterr().err
    assert main(["evaluate", "--reference", str(reference), "--predictions", str(reference), "--sweep", "v"]) == 2
    assert "--sweep apply to running the model" in capsys.readouterr().err


def test_cli_sweep_never_writes_into_the_cache_or_the_swept_head(saved, ts0_head, tmp_path, capsys, monkeypatch):
    import os

    from protrna.cli import main

    lm, head = saved
    reference = tmp_path / "ref.dbn"
    write_dbn(ts0_head, reference)
    base = ["evaluate", "--reference", str(reference), "--model", str(lm), "--head", str(head),
            "--sweep", str(reference), "-q"]
    cache = os.environ["PROTRNA_HOME"]
    for output, message in ((cache, "would overwrite or go inside"), (head.parent, "would overwrite or go inside")):
        # DIR/head is the swept head itself when DIR is its parent.
        assert main(base + ["--sweep-output", str(output)]) == 2
        assert message in capsys.readouterr().err
    taken = tmp_path / "taken"
    (taken / "head").mkdir(parents=True)
    (taken / "head" / "notes.txt").write_text("mine")
    assert main(base + ["--sweep-output", str(taken)]) == 2
    assert "is not a saved head" in capsys.readouterr().err
    assert (taken / "head" / "notes.txt").read_text() == "mine"
