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
