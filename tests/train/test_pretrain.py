"""``protrna pretrain`` end to end on a tiny ESM-2, through the real command line."""

import json
import shutil

import pytest
import torch
from transformers import EsmForMaskedLM

from protrna import cli
from protrna.model import ProtRNA
from protrna.train.transfer import extend_vocabulary

from .conftest import tiny_esm2


@pytest.fixture(autouse=True)
def _only_this_command(monkeypatch):
    # The command under test, without depending on other commands' modules being importable.
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("protrna.train.pretrain",))


def run(esm2_dir, train, output, *extra):
    argv = [
        "pretrain",
        "--esm",
        str(esm2_dir),
        "--train",
        str(train),
        "--output",
        str(output),
        "--trainable-layers",
        "1",
        "--max-tokens",
        "2048",
        "--shuffle-buffer",
        "32",
        "--lr",
        "2e-3",
        "--warmup-steps",
        "2",
        "--log-every",
        "1",
        *extra,
    ]
    return cli.main(argv)


def read_log(path):
    return [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, esm2_dir, rna_fasta, valid_fasta):
    """6 steps, checkpoints at 3 and 6, validation at 3 and 6."""
    out = tmp_path_factory.mktemp("run") / "run"
    from accelerate.state import AcceleratorState

    previous = cli.COMMAND_MODULES
    cli.COMMAND_MODULES = ("protrna.train.pretrain",)
    try:
        assert (
            run(
                esm2_dir,
                rna_fasta,
                out,
                "--max-steps",
                "6",
                "--save-every",
                "3",
                "--eval-every",
                "3",
                "--valid",
                str(valid_fasta),
                "--keep-checkpoints",
                "0",
            )
            == 0
        )
    finally:
        cli.COMMAND_MODULES = previous
        AcceleratorState._reset_state(reset_partial_state=True)
    return out


def test_log_has_one_record_per_step(finished_run):
    records = read_log(finished_run)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all({"loss", "lr", "tokens_per_s"} <= set(r) for r in records)
    with_valid = [r["step"] for r in records if "valid_loss" in r]
    assert with_valid == [3, 6]
    assert records[5]["valid_ppl"] == pytest.approx(2.718281828 ** records[5]["valid_loss"], rel=1e-9)
    assert sorted(p.name for p in (finished_run / "checkpoints").iterdir()) == [
        "step_00000003",
        "step_00000006",
    ]
    info = json.loads((finished_run / "run.json").read_text())
    assert info["trainable_layers"] == 1 and info["config"]["max_steps"] == 6


def test_final_directory_loads_both_ways(finished_run):
    model = ProtRNA.from_pretrained(finished_run / "final").eval()
    plain = EsmForMaskedLM.from_pretrained(finished_run / "final").eval()
    tokens = model.alphabet.get_batch_converter()(["ACGUACGUNN", "GGGAAACCC"])
    with torch.no_grad():
        ours = model(tokens)["logits"]
        theirs = plain(input_ids=tokens, attention_mask=tokens.ne(1).long()).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert plain.lm_head.decoder.weight.data_ptr() == plain.esm.embeddings.word_embeddings.weight.data_ptr()


def test_frozen_weights_bit_identical_and_trained_ones_moved(finished_run):
    start = extend_vocabulary(tiny_esm2()).state_dict()
    end = EsmForMaskedLM.from_pretrained(finished_run / "final").state_dict()
    trained_prefixes = ("esm.encoder.layer.2.", "esm.encoder.emb_layer_norm_after.", "lm_head.")
    for name, tensor in start.items():
        if name in ("esm.embeddings.word_embeddings.weight", "lm_head.decoder.weight"):
            assert torch.equal(end[name][:33], tensor[:33]), "protein rows moved"
            assert not torch.equal(end[name][33:], tensor[33:]), "RNA rows did not train"
        elif name.startswith(trained_prefixes):
            assert not torch.equal(end[name], tensor), f"{name} did not train"
        else:
            assert torch.equal(end[name], tensor), f"frozen {name} moved"


def test_resume_reproduces_the_uninterrupted_run(finished_run, esm2_dir, rna_fasta, valid_fasta, tmp_path):
    # A copy of the run as a kill right after the step-3 checkpoint would have left it.
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    shutil.rmtree(out / "checkpoints" / "step_00000006")
    shutil.rmtree(out / "final")
    assert (
        run(
            esm2_dir,
            rna_fasta,
            out,
            "--max-steps",
            "6",
            "--save-every",
            "3",
            "--eval-every",
            "3",
            "--valid",
            str(valid_fasta),
            "--keep-checkpoints",
            "0",
            "--resume",
        )
        == 0
    )
    expected, got = read_log(finished_run), read_log(out)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]  # steps 4-6 logged once, not twice
    for a, b in zip(expected, got):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6, abs=1e-7)
        assert b["lr"] == a["lr"]
        assert ("valid_loss" in b) == ("valid_loss" in a)
        if "valid_loss" in a:
            assert b["valid_loss"] == pytest.approx(a["valid_loss"], rel=1e-6)
    first = EsmForMaskedLM.from_pretrained(finished_run / "final").state_dict()
    second = EsmForMaskedLM.from_pretrained(out / "final").state_dict()
    for name, tensor in first.items():
        assert torch.allclose(second[name], tensor, atol=1e-6), name


def test_resume_with_another_source_is_refused(finished_run, rna_fasta, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    other = tmp_path / "other_esm2"
    tiny_esm2(seed=1).save_pretrained(other)
    assert run(other, rna_fasta, out, "--max-steps", "8", "--resume") == 2
    assert "frozen weights differ" in capsys.readouterr().err


def test_invalid_record_error_names_record_and_file(esm2_dir, tmp_path, capsys):
    fasta = tmp_path / "bad.fa"
    fasta.write_text(">good\nACGUACGU\n>protein_by_mistake\nMKVLAAGE\n")
    assert run(esm2_dir, fasta, tmp_path / "out", "--max-steps", "2", "--invalid", "error") == 2
    err = capsys.readouterr().err
    assert "'protein_by_mistake'" in err and str(fasta) in err and "line 3" in err


def test_bf16_on_cpu(esm2_dir, rna_fasta, tmp_path):
    assert run(esm2_dir, rna_fasta, tmp_path / "bf16", "--max-steps", "2", "--bf16") == 0
    assert len(read_log(tmp_path / "bf16")) == 2
    assert ProtRNA.from_pretrained(tmp_path / "bf16" / "final").dtype == torch.float32
