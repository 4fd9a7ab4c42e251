"""``protrna train-ss`` on a tiny language model and real bpRNA slices, through the command line."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from protrna import cli
from protrna.runtime import StructurePredictor
from protrna.heads.ss import RotaFormer, RotaFormerConfig
from protrna.model import ProtRNA, ProtRNAConfig
from protrna.structure import BasePairs, read_dbn
from protrna.train.features import cached_features
from protrna.train.loop import TrainConfig, make_accelerator, train
from protrna.train.ss import (
    collate_structures,
    pick_threshold,
    select_threshold,
    structure_loss,
    threshold_grid,
    upper_triangle_mask,
)

COMMANDS = ("protrna.train.ss", "protrna.fold", "protrna.evaluate")
HEAD = ["--num-blocks", "1", "--single-dim", "32", "--pair-dim", "16", "--msa-heads", "2", "--pair-heads", "2",
        "--head-width", "8", "--outer-dim", "8"]
MAX_LENGTH = 90


@pytest.fixture(autouse=True)
def _only_these_commands(monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", COMMANDS)


def dbn_slice(source, target, count, max_length, longer=0):
    """The first ``count`` records of a .dbn file up to ``max_length`` nt, then ``longer`` records
    of up to 50 nt more (for --max-length to skip)."""
    lines = source.read_text().splitlines()
    records = [lines[k : k + 3] for k in range(0, len(lines) - 2, 3)]
    short = [r for r in records if len(r[1]) <= max_length][:count]
    long = [r for r in records if max_length < len(r[1]) <= max_length + 50][:longer]
    target.write_text("".join("\n".join(r) + "\n" for r in short + long))
    return target


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lm") / "tiny"
    ProtRNA(ProtRNAConfig(num_layers=2, embed_dim=64, attention_heads=2)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sets(tmp_path_factory, data_dir):
    """24 training RNAs and 4 longer ones (for --max-length to skip); 10 validation RNAs."""
    folder = tmp_path_factory.mktemp("bprna")
    return {
        "train": dbn_slice(data_dir / "bprna" / "TR0.dbn", folder / "train.dbn", 24, MAX_LENGTH, longer=4),
        "valid": dbn_slice(data_dir / "bprna" / "VL0.dbn", folder / "valid.dbn", 10, MAX_LENGTH),
    }


def arguments(lm_dir, sets, output, cache_dir, *extra):
    return [
        "train-ss", "--model", str(lm_dir), "--train", str(sets["train"]), "--valid", str(sets["valid"]),
        "--output", str(output), "--cache-dir", str(cache_dir), "--max-length", str(MAX_LENGTH), *HEAD,
        "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "1", "--log-every", "1",
        "--threshold-grid", "0.05", "0.95", "0.05", *extra,  # the grid these tests were written for
    ]


def read_log(path):
    return [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, lm_dir, sets):
    """6 steps, checkpoints and validation at 3 and 6."""
    from accelerate.state import AcceleratorState

    root = tmp_path_factory.mktemp("run")
    previous = cli.COMMAND_MODULES
    cli.COMMAND_MODULES = COMMANDS
    try:
        argv = arguments(lm_dir, sets, root / "run", root / "cache", "--max-steps", "6", "--save-every", "3",
                         "--eval-every", "3", "--keep-checkpoints", "0")
        assert cli.main(argv) == 0
    finally:
        cli.COMMAND_MODULES = previous
        AcceleratorState._reset_state(reset_partial_state=True)
    return root / "run"


# ---- the pieces -------------------------------------------------------------------------------


def test_upper_triangle_mask_counts_each_pair_once():
    mask = upper_triangle_mask(torch.tensor([4, 2]), 4)
    assert mask.sum().item() == 6 + 1
    assert not mask[1, 2:].any() and not mask[1, :, 2:].any(), "padding"
    assert not mask.diagonal(dim1=1, dim2=2).any()


def constructed_case():
    """One 10-nt RNA with pairs (0,9), (1,8), (2,7) and probabilities worked out by hand:

    p > t for t <= 0.15 predicts 5 cells (F1 0.75); 0.20-0.35: 4 cells, 3 right (F1 6/7);
    0.40: exactly the 3 pairs (F1 1); 0.45-0.75: 2 pairs (F1 0.8); 0.80-0.85: 1 (F1 0.5); then 0.
    """
    p = np.full((10, 10), 0.01)
    for (i, j), value in {(0, 9): 0.9, (1, 8): 0.8, (2, 7): 0.42, (3, 6): 0.38, (4, 5): 0.2}.items():
        p[i, j] = p[j, i] = value
    return p, BasePairs(10, [(0, 9), (1, 8), (2, 7)])


def test_threshold_selection_picks_the_best_value_on_a_constructed_case():
    grid = threshold_grid(0.05, 0.95, 0.05)
    probabilities, reference = constructed_case()
    threshold, curve = select_threshold([probabilities], [reference], grid)
    assert threshold == 0.4
    expected = {0.05: 0.75, 0.2: 6 / 7, 0.35: 6 / 7, 0.4: 1.0, 0.45: 0.8, 0.75: 0.8, 0.8: 0.5, 0.9: 0.0}
    for t, f1 in expected.items():
        assert curve[grid.index(t)] == pytest.approx(f1)


def test_threshold_selection_maximises_the_mean_over_sequences():
    grid = threshold_grid(0.05, 0.95, 0.05)
    first, reference = constructed_case()
    # A second RNA whose only pair has probability 0.22: it needs t < 0.22.
    second = np.full((6, 6), 0.01)
    second[0, 5] = second[5, 0] = 0.22
    threshold, curve = select_threshold([first, second], [reference, BasePairs(6, [(0, 5)])], grid)
    # Mean F1: t = 0.20 gives (6/7 + 1) / 2 = 0.929, more than t = 0.15 ((0.75 + 1) / 2) or
    # t = 0.40, the first RNA's best ((1 + 0) / 2).
    assert threshold == 0.2
    assert curve.max() == pytest.approx((6 / 7 + 1) / 2)


def test_ties_go_to_the_middle_of_the_tied_thresholds():
    assert pick_threshold([0.1, 0.2, 0.3, 0.4, 0.5], [0.2, 0.9, 0.9, 0.9, 0.1]) == 0.3
    assert pick_threshold([0.1, 0.2, 0.3, 0.4], [0.9, 0.9, 0.1, 0.1]) == 0.1


def test_loss_falls_on_a_fixed_batch(tiny_model, sets, tmp_path):
    records = list(read_dbn(sets["valid"]))[:4]
    features = cached_features(tiny_model, [r.sequence for r in records], tmp_path / "cache", progress=False)
    batch = collate_structures(features, records, [0, 1, 2, 3])
    assert batch["n_items"] == sum(len(r) * (len(r) - 1) // 2 for r in records)
    torch.manual_seed(0)
    head = RotaFormer(RotaFormerConfig(input_dim=64, single_dim=32, pair_dim=16, num_blocks=1, msa_heads=2,
                                       pair_heads=2, head_width=8, outer_dim=8))

    def forever():
        while True:
            yield batch

    config = TrainConfig(tmp_path / "run", max_steps=80, lr=1e-2, warmup_steps=0, min_lr=1e-2, log_every=1)
    train(config, make_accelerator(config), head, forever(), structure_loss)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    mask = upper_triangle_mask(batch["lengths"], batch["targets"].shape[-1])
    rate = batch["targets"][mask].mean().item()
    # Below the loss of the best constant guess (the base rate of pairs, ~1/L): pairs were learnt,
    # not only "no pair anywhere".
    constant = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    assert losses[-1] < 0.75 * constant < 0.1 * losses[0]
    with torch.no_grad():
        logits = head(batch["representations"], lengths=batch["lengths"])
    paired = batch["targets"].bool() & mask
    assert logits[paired].mean() > logits[mask & ~paired].mean() + 3.0


# ---- the command ------------------------------------------------------------------------------


def test_log_checkpoints_and_final_directory(finished_run, sets):
    records = read_log(finished_run)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    evaluated = [r for r in records if "valid_loss" in r]
    assert [r["step"] for r in evaluated] == [3, 6]
    assert all(0 <= r["valid_f1"] <= 1 and r["valid_threshold"] in threshold_grid(0.05, 0.95, 0.05)
               for r in evaluated)
    assert sorted(p.name for p in (finished_run / "checkpoints").iterdir()) == ["step_00000003", "step_00000006"]
    info = json.loads((finished_run / "run.json").read_text())
    expected = sum(len(r) <= MAX_LENGTH for r in read_dbn(sets["train"]))
    assert info["train_records"] == expected == 24, "--max-length skipped the 4 longer RNAs"
    head = RotaFormer.from_pretrained(finished_run / "final")
    assert head.config.input_dim == 64 and head.config.num_blocks == 1
    chosen = json.loads((finished_run / "final" / "train_ss.json").read_text())
    assert head.config.threshold == chosen["threshold"] == evaluated[-1]["valid_threshold"]


def test_stored_threshold_is_the_best_one_on_the_validation_set(finished_run, lm_dir, sets):
    lm = ProtRNA.from_pretrained(lm_dir)
    head = RotaFormer.from_pretrained(finished_run / "final")
    records = [r for r in read_dbn(sets["valid"])]
    probabilities = {p.id: p.probabilities for p in StructurePredictor(lm, head).predict(
        [(r.id, r.sequence) for r in records])}
    grid = threshold_grid(0.05, 0.95, 0.05)
    threshold, curve = select_threshold([probabilities[r.id] for r in records], [r.pairs for r in records], grid)
    assert head.config.threshold == threshold
    saved = json.loads((finished_run / "final" / "train_ss.json").read_text())["valid_mean_f1_by_threshold"]
    np.testing.assert_allclose([saved[str(t)] for t in grid], curve, atol=1e-9)


def test_resume_reproduces_the_uninterrupted_run(finished_run, lm_dir, sets, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    shutil.rmtree(out / "checkpoints" / "step_00000006")
    shutil.rmtree(out / "final")
    argv = arguments(lm_dir, sets, out, finished_run.parent / "cache", "--max-steps", "6", "--save-every", "3",
                     "--eval-every", "3", "--keep-checkpoints", "0", "--resume")
    assert cli.main(argv) == 0
    expected, got = read_log(finished_run), read_log(out)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(expected, got):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6, abs=1e-7)
        assert ("valid_loss" in b) == ("valid_loss" in a)
        if "valid_loss" in a:
            for key in ("valid_loss", "valid_f1", "valid_threshold"):
                assert b[key] == pytest.approx(a[key], rel=1e-6)
    first = RotaFormer.from_pretrained(finished_run / "final")
    second = RotaFormer.from_pretrained(out / "final")
    assert first.config == second.config
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_cache_is_reused_and_the_language_model_not_run_again(finished_run, lm_dir, sets, tmp_path, monkeypatch):
    calls = []
    original = ProtRNA.forward

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ProtRNA, "forward", counting)
    argv = arguments(lm_dir, sets, tmp_path / "again", finished_run.parent / "cache", "--max-steps", "1")
    assert cli.main(argv) == 0
    assert calls == [], "the cached features were recomputed"
    assert (tmp_path / "again" / "final" / "config.json").exists()
    # A fresh cache directory: the language model runs.
    argv = arguments(lm_dir, sets, tmp_path / "fresh", tmp_path / "cache", "--max-steps", "1")
    assert cli.main(argv) == 0 and calls


def test_resume_with_another_language_model_is_refused(finished_run, sets, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    torch.manual_seed(7)
    other = tmp_path / "other_lm"
    ProtRNA(ProtRNAConfig(num_layers=2, embed_dim=64, attention_heads=2)).save_pretrained(other)
    argv = arguments(other, sets, out, tmp_path / "cache", "--max-steps", "8", "--resume")
    assert cli.main(argv) == 2
    assert "resume with the same --model" in capsys.readouterr().err


def test_final_head_works_with_fold_and_evaluate(finished_run, lm_dir, sets, tmp_path):
    head_dir = finished_run / "final"
    threshold = RotaFormer.from_pretrained(head_dir).config.threshold
    fold_dir = tmp_path / "fold"
    assert cli.main(["fold", str(sets["valid"]), "--model", str(lm_dir), "--head", str(head_dir),
                     "-o", str(fold_dir), "--quiet"]) == 0
    folded = list(read_dbn(fold_dir / "predictions.dbn"))
    assert [r.id for r in folded] == [r.id for r in read_dbn(sets["valid"])]
    assert json.loads((fold_dir / "fold_settings.json").read_text())["threshold"] == threshold
    summary = tmp_path / "summary.json"
    assert cli.main(["evaluate", "--reference", str(sets["valid"]), "--model", str(lm_dir), "--head",
                     str(head_dir), "--summary", str(summary), "--quiet"]) == 0
    result = json.loads(summary.read_text())
    assert result["n"] == 10 and result["settings"]["threshold"] == threshold
    # The same F1 as the run logged for its final weights and threshold (same sets, same protocol).
    logged = read_log(finished_run)[-1]["valid_f1"]
    assert result["means"]["f1"] == pytest.approx(logged, abs=1e-6)


def test_bad_records_are_named(lm_dir, sets, tmp_path, capsys):
    bad_letters = tmp_path / "letters.dbn"
    bad_letters.write_text(">ok\nGGGAAACCC\n(((...)))\n>protein_like\nGGEFAACCC\n(((...)))\n")
    argv = arguments(lm_dir, sets, tmp_path / "a", tmp_path / "cache", "--max-steps", "1")
    argv[argv.index("--train") + 1] = str(bad_letters)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert str(bad_letters) in err and "'protein_like'" in err and "'E' at position 3" in err

    bad_structure = tmp_path / "structure.dbn"
    bad_structure.write_text(">ok\nGGGAAACCC\n(((...)))\n>unbalanced\nGGGAAACCC\n(((...))\n")
    argv[argv.index("--train") + 1] = str(bad_structure)
    argv[argv.index("--output") + 1] = str(tmp_path / "b")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert str(bad_structure) in err and "'unbalanced'" in err


def test_bf16(lm_dir, sets, tmp_path):
    argv = arguments(lm_dir, sets, tmp_path / "bf16", tmp_path / "cache", "--max-steps", "2", "--bf16",
                     "--cache-dtype", "bfloat16", "--gradient-checkpointing")
    assert cli.main(argv) == 0
    assert len(read_log(tmp_path / "bf16")) == 2
    assert RotaFormer.from_pretrained(tmp_path / "bf16" / "final").dtype == torch.float32


# ---- two processes ----------------------------------------------------------------------------

LAUNCHER = f"""
import sys
from protrna import cli
cli.COMMAND_MODULES = {COMMANDS!r}
sys.exit(cli.main())
"""


def torchrun(tmp_path, args):
    script = tmp_path / "launch.py"
    script.write_text(LAUNCHER)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(script), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.mark.slow
def test_torchrun_two_processes_train_and_resume(lm_dir, sets, tmp_path):
    out = tmp_path / "run"
    args = arguments(lm_dir, sets, out, tmp_path / "cache", "--max-steps", "4", "--save-every", "2",
                     "--eval-every", "2", "--keep-checkpoints", "0")
    done = torchrun(tmp_path, args)
    assert "2 process(es)" in done.stderr
    records = read_log(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert sorted(p.name for p in (out / "checkpoints" / "step_00000002").iterdir()) == [
        "rank_0.pt", "rank_1.pt", "trainer.pt"]
    assert RotaFormer.from_pretrained(out / "final").config.threshold == records[-1]["valid_threshold"]

    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_00000004")
    shutil.rmtree(resumed / "final")
    torchrun(tmp_path, [str(resumed) if a == str(out) else a for a in args] + ["--resume"])
    for a, b in zip(records, read_log(resumed)):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6, abs=1e-7)
        if "valid_loss" in a:
            assert b["valid_loss"] == pytest.approx(a["valid_loss"], rel=1e-6)
            assert b["valid_f1"] == pytest.approx(a["valid_f1"], rel=1e-6)


def test_rnabench_protocol_chooses_on_its_f1_without_unpaired_references(lm_dir, sets, tmp_path):
    valid = tmp_path / "valid.dbn"
    valid.write_text(sets["valid"].read_text() + ">unpaired\nACGUACGUACGU\n............\n")
    out = tmp_path / "run"
    args = arguments(lm_dir, dict(sets, valid=valid), out, tmp_path / "cache", "--max-steps", "2",
                     "--eval-every", "2", "--save-every", "2", "--keep-checkpoints", "0", "--protocol", "rnabench",
                     "--threshold-grid", "0.01", "0.09", "0.01")
    assert cli.main(args) == 0
    head = RotaFormer.from_pretrained(out / "final")
    records = list(read_dbn(valid))
    maps = {p.id: p.probabilities for p in StructurePredictor(ProtRNA.from_pretrained(lm_dir), head).predict(
        [(r.id, r.sequence) for r in records])}
    grid = threshold_grid(0.01, 0.09, 0.01)  # two steps in, pair probabilities are low
    threshold, curve = select_threshold([maps[r.id] for r in records], [r.pairs for r in records], grid, "rnabench")
    assert curve.max() > 0
    with_unpaired = select_threshold([maps[r.id] for r in records], [r.pairs for r in records], grid)[1]
    assert not np.allclose(curve, with_unpaired)  # another F1 and another mean: the protocol mattered
    saved = json.loads((out / "final" / "train_ss.json").read_text())
    assert saved["protocol"] == "rnabench" and head.config.threshold == threshold
    np.testing.assert_allclose([saved["valid_mean_f1_by_threshold"][str(t)] for t in grid], curve, atol=1e-9)
