"""``protrna download`` and ``protrna convert``."""

from __future__ import annotations

import argparse

import pytest
import torch

from protrna import ProtRNA, load_pretrained_model
from protrna.weights import cli
from protrna.weights.keras_h5 import load_lm_h5
from protrna.weights.registry import OFFICIAL_WEIGHTS, cache_root
from tests.loopback_zenodo import LoopbackZenodo


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="protrna")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_convert_writes_a_loadable_directory(parity_dir, tmp_path, capsys):
    out_dir = tmp_path / "protrna-tiny"
    assert run(["convert", str(parity_dir / "lm_tiny.h5"), str(out_dir)]) == 0
    assert f"into {out_dir}" in capsys.readouterr().out
    tokens = ProtRNA.from_pretrained(out_dir).alphabet.get_batch_converter()(["ACGU"])
    with torch.no_grad():
        converted = load_pretrained_model(out_dir)(tokens)["logits"]
        direct = load_lm_h5(parity_dir / "lm_tiny.h5")(tokens)["logits"]
    torch.testing.assert_close(converted, direct, rtol=0, atol=0)


def test_download_fetches_converts_and_says_where(parity_dir, monkeypatch, capsys):
    weights = OFFICIAL_WEIGHTS["ProtRNA_pretrained"]
    server = LoopbackZenodo(weights.record)
    server.add(weights.filename, (parity_dir / "lm_tiny.h5").read_bytes())
    server.start()
    try:
        monkeypatch.setenv("PROTRNA_ZENODO_URL", server.url)
        monkeypatch.delenv("PROTRNA_OFFLINE")
        assert run(["download", "--quiet", "ProtRNA_pretrained"]) == 0
    finally:
        server.stop()
    out = capsys.readouterr().out
    assert str(cache_root()) in out and str(weights.converted_dir) in out
    assert str(weights.download_path) in out

    # Later, offline: the converted copy is all that is needed, and the h5 can go.
    monkeypatch.setenv("PROTRNA_OFFLINE", "1")
    assert run(["download", "-q", "--remove-h5", "ProtRNA_pretrained"]) == 0
    assert not weights.download_path.exists()
    assert isinstance(load_pretrained_model("ProtRNA_pretrained"), ProtRNA)


def test_download_rejects_an_unknown_name_before_any_work():
    with pytest.raises(ValueError, match="known names: ProtRNA_pretrained, ssHead_RF_bprna"):
        run(["download", "ProtRNA_pretrained", "esm2_t33"])
    assert not (cache_root() / "downloads").exists()


def test_download_list_shows_every_entry_with_record_threshold_and_unverified_fields(capsys):
    assert run(["download", "--list"]) == 0
    out = capsys.readouterr().out
    for name in OFFICIAL_WEIGHTS:
        assert f"{name}  (" in out
    inter = out[out.index("ssHead_RF_rnabench_inter  ("):]
    assert "file ssHead_RF_rnabench_inter.h5 in Zenodo record 14795554 or 13888473" in inter
    assert "threshold 0.14" in inter and "unverified: record, filename, approx_size" in inter
    bprna = out[out.index("ssHead_RF_bprna  ("):out.index("ssHead_RF_rnabench_bprna  (")]
    assert "threshold 0.25" in bprna and "unverified" not in bprna and "not cached" in bprna
    assert not (cache_root() / "downloads").exists()  # listing fetches nothing


def test_download_help_names_the_rnabench_heads(capsys):
    with pytest.raises(SystemExit):
        run(["download", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name in ("ssHead_RF_rnabench_bprna", "ssHead_RF_rnabench_intra", "ssHead_RF_rnabench_inter", "--list"):
        assert name in help_text


def test_download_of_all_goes_on_past_an_entry_that_fails(parity_dir, monkeypatch, capsys):
    server = LoopbackZenodo("13888473")  # the two released files only; no RnaBench head anywhere
    server.add("ProtRNA_pretrained.h5", (parity_dir / "lm_tiny.h5").read_bytes())
    server.add("ssHead_RF_bprna.h5", (parity_dir / "sshead_tiny.h5").read_bytes())
    server.add("data_ss.zip", b"zip", record="14795554")
    server.start()
    try:
        monkeypatch.setenv("PROTRNA_ZENODO_URL", server.url)
        monkeypatch.delenv("PROTRNA_OFFLINE")
        assert run(["download", "-q"]) == 1
    finally:
        server.stop()
    captured = capsys.readouterr()
    assert (OFFICIAL_WEIGHTS["ProtRNA_pretrained"].converted_dir / "config.json").is_file()
    assert (OFFICIAL_WEIGHTS["ssHead_RF_bprna"].converted_dir / "config.json").is_file()
    assert "3 of 5 failed: ssHead_RF_rnabench_bprna, ssHead_RF_rnabench_intra, ssHead_RF_rnabench_inter" in captured.err
    assert "ssHead_RF_rnabench_intra: failed: no Zenodo record" in captured.err


def test_convert_stores_a_threshold_with_a_head(parity_dir, tmp_path, capsys):
    out_dir = tmp_path / "inter"
    assert run(["convert", str(parity_dir / "sshead_tiny.h5"), str(out_dir), "--threshold", "0.14"]) == 0
    assert "(structure head)" in capsys.readouterr().out
    assert load_pretrained_model(out_dir).config.threshold == 0.14
