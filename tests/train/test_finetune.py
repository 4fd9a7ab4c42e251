"""``protrna finetune`` on a tiny language model and real nRC / bpRNA slices."""

import csv
import json
import random
import shutil

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import EsmForMaskedLM

from protrna import cli
from protrna.data.fasta import read_fasta
from protrna.finetuned import load_finetuned
from protrna.heads.task import TaskHead, TaskHeadConfig
from protrna.model import ProtRNA, ProtRNAConfig
from protrna.structure import read_dbn
from protrna.train.features import FeatureSettings, cached_features
from protrna.train.finetune import collate_features, task_loss
from protrna.train.loop import TrainConfig, make_accelerator, train

COMMANDS = ("protrna.train.finetune",)


@pytest.fixture(autouse=True)
def _only_this_command(monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", COMMANDS)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lm") / "tiny"
    ProtRNA(ProtRNAConfig(num_layers=2, embed_dim=64, attention_heads=2)).save_pretrained(path)
    return path


def fasta_sample(source, target, count, seed):
    """``count`` random records of an nRC file, headers (the class names) as they are."""
    records = list(read_fasta(source))
    chosen = random.Random(seed).sample(records, count)
    target.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in chosen))
    return chosen


@pytest.fixture(scope="module")
def nrc(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("nrc")
    fasta_sample(data_dir / "ncrna" / "dataset_nRC_train.fasta", folder / "train.fasta", 120, seed=0)
    fasta_sample(data_dir / "ncrna" / "dataset_nRC_test.fasta", folder / "test.fasta", 40, seed=1)
    return {"train": folder / "train.fasta", "test": folder / "test.fasta"}


def arguments(lm_dir, train, output, cache_dir, *extra, task="classification"):
    return ["finetune", "--model", str(lm_dir), "--task", task, "--train", str(train), "--output", str(output),
            "--cache-dir", str(cache_dir), "--batch-size", "16", "--lr", "3e-3", "--warmup-steps", "1",
            "--log-every", "1", "--hidden-dim", "32", *extra]


def read_log(path):
    return [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]


def read_tsv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, lm_dir, nrc):
    """Frozen LM, nRC classes: 6 steps, checkpoints and validation at 3 and 6."""
    from accelerate.state import AcceleratorState

    root = tmp_path_factory.mktemp("run")
    previous = cli.COMMAND_MODULES
    cli.COMMAND_MODULES = COMMANDS
    try:
        argv = arguments(lm_dir, nrc["train"], root / "run", root / "cache", "--valid", str(nrc["test"]),
                         "--test", str(nrc["test"]), "--max-steps", "6", "--save-every", "3", "--eval-every", "3",
                         "--keep-checkpoints", "0")
        assert cli.main(argv) == 0
    finally:
        cli.COMMAND_MODULES = previous
        AcceleratorState._reset_state(reset_partial_state=True)
    return root / "run"


def test_loss_falls_on_a_fixed_batch(tiny_model, nrc, tmp_path):
    from protrna.data.labelled import read_labelled

    records = read_labelled(nrc["train"], "classification")[:16]
    labels = sorted({r.label for r in records})
    features = cached_features(tiny_model, [r.sequence for r in records], tmp_path / "cache",
                               FeatureSettings(kinds=("mean", "bos")), progress=False)
    config = TaskHeadConfig("classification", input_dim=64, labels=labels, hidden_dim=64, dropout=0.0)
    batch = collate_features(features, records, config, list(range(16)))
    torch.manual_seed(0)
    head = TaskHead(config)

    def forever():
        while True:
            yield batch

    train_config = TrainConfig(tmp_path / "run", max_steps=60, lr=1e-2, warmup_steps=0, min_lr=1e-2, log_every=1)
    train(train_config, make_accelerator(train_config), head, forever(), lambda m, b: task_loss(m, b, "classification"))
    losses = [r["loss"] for r in read_log(tmp_path / "run")]
    assert losses[-1] < 0.2 * losses[0]


def test_log_final_directory_and_metrics(finished_run, nrc):
    records = read_log(finished_run)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "valid_accuracy" in r] == [3, 6]
    info = json.loads((finished_run / "final" / "finetune.json").read_text())
    assert info["lm_mode"] == "frozen" and info["task"] == "classification"
    head = TaskHead.from_pretrained(finished_run / "final")
    train_classes = {r.id for r in read_fasta(nrc["train"])}
    assert head.config.labels == sorted(train_classes)
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert metrics == info["metrics"]
    test = metrics["test"]
    assert test["n"] == 40 and 0 <= test["accuracy"] <= 1 and 0 <= test["macro_f1"] <= 1
    assert metrics["valid"]["accuracy"] == pytest.approx(records[-1]["valid_accuracy"])
    # nRC ids repeat (they are the class names): rows are told apart by their index in the file.
    rows = read_tsv(finished_run / "test_predictions.tsv")
    assert [int(r["index"]) for r in rows] == list(range(40))
    assert len({r["id"] for r in rows}) < 40
    assert all(r["label"] == r["id"] for r in rows)
    accuracy = sum(r["label"] == r["prediction"] for r in rows) / 40
    assert accuracy == pytest.approx(test["accuracy"])


def test_predict_command_reproduces_the_final_evaluation(finished_run, nrc, tmp_path, capsys):
    out = tmp_path / "predictions.tsv"
    summary = tmp_path / "summary.json"
    assert cli.main(["finetune", "--predict", str(finished_run / "final"), "--input", str(nrc["test"]),
                     "--output", str(out), "--summary", str(summary), "--quiet"]) == 0
    assert "accuracy" in capsys.readouterr().out
    ours, final = read_tsv(out), read_tsv(finished_run / "test_predictions.tsv")
    assert [r["prediction"] for r in ours] == [r["prediction"] for r in final]
    for a, b in zip(ours, final):
        probabilities = [float(v) for k, v in a.items() if k.startswith("p_")]
        expected = [float(v) for k, v in b.items() if k.startswith("p_")]
        assert probabilities == pytest.approx(expected, abs=2e-5)
    test_metrics = json.loads((finished_run / "metrics.json").read_text())["test"]
    assert json.loads(summary.read_text())["metrics"]["accuracy"] == test_metrics["accuracy"]
    # The input is never overwritten by the predictions.
    copy = tmp_path / "input.fasta"
    shutil.copy(nrc["test"], copy)
    assert cli.main(["finetune", "--predict", str(finished_run / "final"), "--input", str(copy),
                     "--output", str(copy), "--quiet"]) == 2
    assert copy.read_bytes() == nrc["test"].read_bytes() and "is the input file" in capsys.readouterr().err
    # And from Python.
    model = load_finetuned(finished_run / "final")
    predictions = model.predict([r.sequence for r in read_fasta(nrc["test"])][:5])
    assert [p.prediction for p in predictions] == [r["prediction"] for r in final[:5]]


def test_resume_reproduces_the_uninterrupted_run(finished_run, lm_dir, nrc, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    shutil.rmtree(out / "checkpoints" / "step_00000006")
    shutil.rmtree(out / "final")
    argv = arguments(lm_dir, nrc["train"], out, finished_run.parent / "cache", "--valid", str(nrc["test"]),
                     "--test", str(nrc["test"]), "--max-steps", "6", "--save-every", "3", "--eval-every", "3",
                     "--keep-checkpoints", "0", "--resume")
    assert cli.main(argv) == 0
    for a, b in zip(read_log(finished_run), read_log(out)):
        assert b["step"] == a["step"] and b["loss"] == pytest.approx(a["loss"], rel=1e-6, abs=1e-7)
        assert b.get("valid_accuracy") == a.get("valid_accuracy")
    first = load_file(str(finished_run / "final" / "model.safetensors"))
    second = load_file(str(out / "final" / "model.safetensors"))
    for name, tensor in first.items():
        assert torch.allclose(second[name], tensor, atol=1e-6), name


def test_cache_is_reused_and_the_language_model_not_run_again(finished_run, lm_dir, nrc, tmp_path, monkeypatch):
    calls = []
    original = ProtRNA.forward

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ProtRNA, "forward", counting)
    argv = arguments(lm_dir, nrc["train"], tmp_path / "again", finished_run.parent / "cache", "--max-steps", "1",
                     "--pooling", "bos")  # another pooling reads the same cache
    assert cli.main(argv) == 0
    assert calls == []


def lm_weights(path):
    return EsmForMaskedLM.from_pretrained(path).state_dict()


def test_top_layers_train_and_the_rest_stays_bit_identical(lm_dir, nrc, tmp_path):
    out = tmp_path / "top"
    argv = arguments(lm_dir, nrc["train"], out, tmp_path / "cache", "--trainable-layers", "1", "--max-steps", "3",
                     "--test", str(nrc["test"]))
    assert cli.main(argv) == 0
    start, end = lm_weights(lm_dir), lm_weights(out / "final" / "lm")
    trained = ("esm.encoder.layer.1.", "esm.encoder.emb_layer_norm_after.")
    for name, tensor in start.items():
        if name.startswith(trained) and not name.endswith("rotary_embeddings.inv_freq"):
            assert not torch.equal(end[name], tensor), f"{name} did not train"
        else:
            assert torch.equal(end[name], tensor), f"frozen {name} moved"
    assert json.loads((out / "metrics.json").read_text())["test"]["n"] == 40


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # inside peft
def test_lora_changes_only_adapters_and_head(lm_dir, nrc, tmp_path):
    out = tmp_path / "lora"
    argv = arguments(lm_dir, nrc["train"], out, tmp_path / "cache", "--lora-rank", "4", "--max-steps", "3",
                     "--save-every", "3", "--test", str(nrc["test"]))
    assert cli.main(argv) == 0
    # What the run trained (the checkpoint holds the trainable weights only): adapters and head.
    saved = torch.load(out / "checkpoints" / "step_00000003" / "trainer.pt", weights_only=True)["model"]
    assert saved and all(".lora_A." in k or ".lora_B." in k or k.startswith("head.") for k in saved)
    assert any(".lora_B." in k and v.abs().sum() > 0 for k, v in saved.items()), "adapters did not train"
    # The merged model differs from the base only in the adapted attention projections.
    base = lm_weights(lm_dir)
    adapted = (".attention.self.query.", ".attention.self.key.", ".attention.self.value.",
               ".attention.output.dense.")
    unpacked = lm_weights_of(out / "final", lm_dir)
    for name, tensor in base.items():
        if any(part in name for part in adapted) and name.endswith(".weight"):
            assert not torch.equal(unpacked[name], tensor), f"{name} not adapted"
        else:
            assert torch.equal(unpacked[name], tensor), f"{name} moved"
    # The adapter is plain PEFT: it loads onto the base model with peft alone.
    model = PeftModel.from_pretrained(EsmForMaskedLM.from_pretrained(lm_dir), str(out / "final" / "lora"))
    assert sum(".lora_A." in name for name, _ in model.named_parameters()) == 2 * 4
    # The final evaluation went through the saved directory, as predict does.
    rows = read_tsv(out / "test_predictions.tsv")
    predictions = load_finetuned(out / "final").predict([r.sequence for r in read_fasta(nrc["test"])])
    assert [p.prediction for p in predictions] == [r["prediction"] for r in rows]


def lm_weights_of(final_dir, base_dir):
    """The merged language model's weights, loaded the plain PEFT way."""
    model = PeftModel.from_pretrained(EsmForMaskedLM.from_pretrained(base_dir), str(final_dir / "lora"))
    return model.merge_and_unload().state_dict()


def test_regression_from_csv(lm_dir, nrc, tmp_path):
    # A real, checkable property of real RNAs as the target: GC content.
    for name in ("train", "test"):
        with open(tmp_path / f"{name}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["name", "seq", "gc"])
            for k, record in enumerate(read_fasta(nrc[name])):
                s = record.sequence.upper()
                writer.writerow([f"{record.id}_{k}", s, (s.count("G") + s.count("C")) / len(s)])
    out = tmp_path / "gc"
    argv = arguments(lm_dir, tmp_path / "train.csv", out, tmp_path / "cache", "--sequence-column", "seq",
                     "--label-column", "gc", "--id-column", "name", "--test", str(tmp_path / "test.csv"),
                     "--valid", str(tmp_path / "test.csv"), "--max-steps", "4", "--eval-every", "2",
                     task="regression")
    assert cli.main(argv) == 0
    assert {"valid_mse", "valid_r2", "valid_spearman"} <= set(read_log(out)[-1])
    metrics = json.loads((out / "metrics.json").read_text())["test"]
    assert {"mse", "r2", "spearman", "pearson"} <= set(metrics) and metrics["n"] == 40
    head = TaskHead.from_pretrained(out / "final")
    assert 0.3 < head.config.target_mean < 0.7 and head.config.target_std > 0
    rows = read_tsv(out / "test_predictions.tsv")
    assert len(rows) == 40 and rows[0]["id"].endswith("_0"), "ids from --id-column"
    assert all(0 <= float(r["label"]) <= 1 for r in rows)


def test_per_nucleotide_classification_from_tsv(lm_dir, data_dir, tmp_path):
    # Paired / unpaired per nucleotide, from real bpRNA structures.
    records = [r for r in read_dbn(data_dir / "bprna" / "VL0.dbn") if len(r) <= 80][:40]
    path = tmp_path / "paired.tsv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["sequence", "label"])
        for record in records:
            partner = record.pairs.partners()
            writer.writerow([record.sequence, "".join("p" if k >= 0 else "u" for k in partner)])
    out = tmp_path / "tokens"
    argv = arguments(lm_dir, path, out, tmp_path / "cache", "--valid", str(path), "--max-steps", "3",
                     "--eval-every", "3", task="token-classification")
    assert cli.main(argv) == 0
    assert TaskHead.from_pretrained(out / "final").config.labels == ["p", "u"]
    rows = read_tsv(out / "valid_predictions.tsv")
    assert [len(r["prediction"]) for r in rows] == [len(r) for r in records]
    assert json.loads((out / "metrics.json").read_text())["valid"]["n"] == sum(len(r) for r in records)
    prediction = tmp_path / "again.tsv"
    assert cli.main(["finetune", "--predict", str(out / "final"), "--input", str(path), "--output",
                     str(prediction), "--quiet"]) == 0
    assert [r["prediction"] for r in read_tsv(prediction)] == [r["prediction"] for r in rows]


def test_label_regex_on_fasta_headers(lm_dir, tmp_path):
    path = tmp_path / "x.fasta"
    path.write_text("".join(f">seq{k} family=F{k % 2} length={10 + k}\n{'GGGAAACCCU' * (1 + k % 3)}\n"
                            for k in range(12)))
    out = tmp_path / "regex"
    argv = arguments(lm_dir, path, out, tmp_path / "cache", "--label-regex", r"family=(\S+)", "--max-steps", "1")
    assert cli.main(argv) == 0
    assert TaskHead.from_pretrained(out / "final").config.labels == ["F0", "F1"]


def test_bad_inputs_are_named(lm_dir, nrc, tmp_path, capsys):
    def error_of(*argv_changes, task="classification", train=None):
        argv = arguments(lm_dir, train or nrc["train"], tmp_path / f"out{len(list(tmp_path.iterdir()))}",
                         tmp_path / "cache", "--max-steps", "1", *argv_changes, task=task)
        assert cli.main(argv) == 2
        return capsys.readouterr().err

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "log.jsonl").write_text("")
    # Refused before anything is loaded: the missing model is not even looked at.
    assert cli.main(arguments(tmp_path / "no_such_lm", nrc["train"], taken, tmp_path / "cache")) == 2
    assert "pass --resume" in capsys.readouterr().err

    unknown = tmp_path / "unknown.fasta"
    unknown.write_text(">tRNA\nGGGAAACCC\n>not_a_class\nGGGAAACCCA\n")
    err = error_of("--test", str(unknown))
    assert str(unknown) in err and "'not_a_class'" in err and "line 3" in err

    letters = tmp_path / "letters.fasta"
    letters.write_text(">tRNA\nGGGAAACCC\n>miRNA\nGGGQAACCC\n")
    err = error_of(train=letters)
    assert str(letters) in err and "'miRNA'" in err and "'Q' at position 4" in err

    table = tmp_path / "t.csv"
    table.write_text("sequence,value\nGGGAAACCC,1.0\nGGGAAACCCA,oops\n")
    err = error_of(task="regression", train=table)
    assert str(table) in err and "no column 'label'" in err and "value" in err
    err = error_of("--label-column", "value", task="regression", train=table)
    assert str(table) in err and "line 3" in err and "'oops' is not a number" in err

    err = error_of("--label-regex", "(")
    assert "--label-regex '(' is not a regular expression" in err
    for flag, value in (("--batch-size", "0"), ("--hidden-dim", "-3"), ("--lora-alpha", "0")):
        with pytest.raises(SystemExit):  # argparse: usage and "argument --flag: must be ..." on stderr
            error_of(flag, value)
        assert f"argument {flag}: must be" in capsys.readouterr().err

    tokens = tmp_path / "tokens.tsv"
    tokens.write_text("sequence\tlabel\nGGGAAACCC\tppp...ppp\nGGGAAACCC\tppp..ppp\n")
    err = error_of(task="token-classification", train=tokens)
    assert str(tokens) in err and "'1'" in err and "8 per-nucleotide labels for a 9-nt sequence" in err


@pytest.mark.slow
def test_torchrun_two_processes(lm_dir, nrc, tmp_path):
    """Frozen-LM fine-tuning under torchrun: one cache built by process 0, validation metrics
    gathered from both processes, and the same metrics as one process gets."""
    import os
    import subprocess
    import sys

    script = tmp_path / "launch.py"
    script.write_text(f"import sys\nfrom protrna import cli\ncli.COMMAND_MODULES = {COMMANDS!r}\nsys.exit(cli.main())\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    args = arguments(lm_dir, nrc["train"], tmp_path / "two", tmp_path / "cache", "--valid", str(nrc["test"]),
                     "--max-steps", "4", "--eval-every", "2")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "2 process(es)" in done.stderr
    records = read_log(tmp_path / "two")
    assert [r["step"] for r in records if "valid_accuracy" in r] == [2, 4]
    # The gathered validation predictions are those of the final model, scored on all 40 RNAs.
    final = json.loads((tmp_path / "two" / "metrics.json").read_text())["valid"]
    assert final["n"] == 40 and final["accuracy"] == pytest.approx(records[-1]["valid_accuracy"])
