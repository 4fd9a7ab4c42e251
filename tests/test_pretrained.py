"""load_pretrained_model in all its forms; official names end to end against a loopback Zenodo that
serves the parity fixtures under the official file names."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import h5py
import pytest
import torch

from protrna import ProtRNA, load_pretrained_model
from protrna.heads.ss import RotaFormer
from protrna.pretrained import SOURCE_FILE, convert_h5, h5_kind, official_model_dir
from protrna.weights.download import ChecksumError, DownloadError, OfflineError
from protrna.weights.keras_h5 import KerasFormatError, load_lm_h5
from protrna.weights.keras_ss_head import load_ss_head_h5
from protrna.weights.registry import OFFICIAL_WEIGHTS, cache_root, record_json_path
from tests.loopback_zenodo import LoopbackZenodo

LM = OFFICIAL_WEIGHTS["ProtRNA_pretrained"]
HEAD = OFFICIAL_WEIGHTS["ssHead_RF_bprna"]


@pytest.fixture
def zenodo(parity_dir, monkeypatch):
    server = LoopbackZenodo(LM.record)
    server.add(LM.filename, (parity_dir / "lm_tiny.h5").read_bytes())
    server.add(HEAD.filename, (parity_dir / "sshead_tiny.h5").read_bytes())
    server.start()
    monkeypatch.setenv("PROTRNA_ZENODO_URL", server.url)
    monkeypatch.delenv("PROTRNA_OFFLINE")
    yield server
    server.stop()


def logits(model: ProtRNA) -> torch.Tensor:
    tokens = model.alphabet.get_batch_converter()(["ACGUN", "gguc-"])
    with torch.no_grad():
        return model(tokens)["logits"]


def test_official_lm_is_downloaded_converted_and_then_loaded_offline(zenodo, parity_dir):
    model = load_pretrained_model("ProtRNA_pretrained", progress=False)
    assert isinstance(model, ProtRNA) and not model.training
    torch.testing.assert_close(logits(model), logits(load_lm_h5(parity_dir / "lm_tiny.h5")), rtol=0, atol=0)

    converted = cache_root() / "models" / "ProtRNA_pretrained"
    assert (converted / "config.json").is_file() and (converted / "model.safetensors").is_file()
    assert json.loads((converted / SOURCE_FILE).read_text())["name"] == "ProtRNA_pretrained"
    assert (cache_root() / "downloads" / "ProtRNA_pretrained.h5").is_file()
    assert record_json_path(LM.record).is_file()
    assert not list((cache_root() / "models").glob(".*tmp*")), "no temporary directory left"

    # The second load uses the converted copy: no server, no request.
    requests = len(zenodo.requests)
    zenodo.stop()
    again = load_pretrained_model("ProtRNA_pretrained", progress=False)
    assert len(zenodo.requests) == requests
    torch.testing.assert_close(logits(again), logits(model), rtol=0, atol=0)


def test_official_head_is_downloaded_converted_and_then_loaded_offline(zenodo, parity_dir):
    head = load_pretrained_model("ssHead_RF_bprna", progress=False)
    assert type(head).__name__ == "RotaFormer" and not head.training
    direct = load_ss_head_h5(parity_dir / "sshead_tiny.h5").state_dict()
    loaded = head.state_dict()
    assert loaded.keys() == direct.keys()
    for name, tensor in direct.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0)
    config = json.loads((cache_root() / "models" / "ssHead_RF_bprna" / "config.json").read_text())
    assert config["model_type"] == "protrna-rotaformer"

    zenodo.stop()
    assert type(load_pretrained_model("ssHead_RF_bprna", progress=False)).__name__ == "RotaFormer"


def test_offline_fails_at_once_saying_what_to_download_and_where():
    started = time.monotonic()
    with pytest.raises(OfflineError) as raised:
        load_pretrained_model("ProtRNA_pretrained")
    assert time.monotonic() - started < 1.0
    message = str(raised.value)
    assert LM.url in message and "ProtRNA_pretrained.h5" in message
    assert str(cache_root() / "downloads") in message and "PROTRNA_OFFLINE" in message


def test_no_network_fails_at_once_with_the_same_advice(monkeypatch):
    monkeypatch.delenv("PROTRNA_OFFLINE")
    monkeypatch.setenv("PROTRNA_ZENODO_URL", f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    with pytest.raises(DownloadError, match="cannot reach") as raised:
        load_pretrained_model("ssHead_RF_bprna")
    assert time.monotonic() - started < 1.0
    assert str(cache_root() / "downloads") in str(raised.value)


def test_offline_uses_a_file_put_in_the_downloads_by_hand(parity_dir):
    LM.download_path.parent.mkdir(parents=True)
    shutil.copy(parity_dir / "lm_tiny.h5", LM.download_path)
    with pytest.warns(UserWarning, match="without checking its md5"):
        model = load_pretrained_model("ProtRNA_pretrained")
    torch.testing.assert_close(logits(model), logits(load_lm_h5(parity_dir / "lm_tiny.h5")), rtol=0, atol=0)


def test_offline_checks_a_file_by_hand_when_the_record_is_cached(parity_dir, tmp_path):
    LM.download_path.parent.mkdir(parents=True)
    shutil.copy(parity_dir / "lm_tiny.h5", LM.download_path)
    record = {"files": [{"key": LM.filename, "size": 1, "checksum": "md5:" + "0" * 32}]}
    record_json_path(LM.record).write_text(json.dumps(record))
    with pytest.raises(ChecksumError, match="0" * 32):
        load_pretrained_model("ProtRNA_pretrained")
    assert LM.download_path.exists(), "a file the user put there is not deleted"
    assert not LM.converted_dir.exists()

    real_md5 = hashlib.md5(LM.download_path.read_bytes()).hexdigest()
    record["files"][0]["checksum"] = f"md5:{real_md5}"
    record_json_path(LM.record).write_text(json.dumps(record))
    assert isinstance(load_pretrained_model("ProtRNA_pretrained"), ProtRNA)


def test_wrong_published_checksum_leaves_nothing_in_the_cache(parity_dir, monkeypatch):
    server = LoopbackZenodo(LM.record)
    server.add(LM.filename, (parity_dir / "lm_tiny.h5").read_bytes(), md5="f" * 32)
    server.start()
    try:
        monkeypatch.setenv("PROTRNA_ZENODO_URL", server.url)
        monkeypatch.delenv("PROTRNA_OFFLINE")
        with pytest.raises(ChecksumError, match="ProtRNA_pretrained.h5.*" + "f" * 32):
            load_pretrained_model("ProtRNA_pretrained", progress=False)
    finally:
        server.stop()
    leftovers = [p.name for p in (cache_root() / "downloads").iterdir()]
    assert leftovers == [f"zenodo-{LM.record}.json"]
    assert not (cache_root() / "models").exists() or not any((cache_root() / "models").iterdir())


def test_a_stale_cached_record_is_refreshed_after_a_checksum_mismatch(zenodo):
    stale = zenodo.record_json()
    for entry in stale["files"]:
        entry["checksum"] = "md5:" + "0" * 32  # as published before the file was replaced
    record_json_path(LM.record).parent.mkdir(parents=True, exist_ok=True)
    record_json_path(LM.record).write_text(json.dumps(stale))
    model = load_pretrained_model("ProtRNA_pretrained", progress=False)
    assert isinstance(model, ProtRNA)
    assert "0" * 32 not in record_json_path(LM.record).read_text()  # the fresh record was kept
    assert len(zenodo.file_requests()) == 2  # the first download failed its check, the second passed


def test_interrupted_conversion_never_leaves_a_loadable_half(zenodo, monkeypatch):
    original_save = ProtRNA.save_pretrained

    def save_then_die(self, directory):
        original_save(self, directory)
        raise KeyboardInterrupt  # as if killed right after writing the weights

    monkeypatch.setattr(ProtRNA, "save_pretrained", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        load_pretrained_model("ProtRNA_pretrained", progress=False)
    assert list((cache_root() / "models").iterdir()) == []

    # A directory left by a process killed outright is ignored, then cleaned up.
    monkeypatch.setattr(ProtRNA, "save_pretrained", original_save)
    stale = cache_root() / "models" / ".ProtRNA_pretrained.tmp-999-dead"
    stale.mkdir()
    (stale / "config.json").write_text("{")
    assert official_model_dir("ProtRNA_pretrained", progress=False) == LM.converted_dir
    assert not stale.exists()
    assert isinstance(load_pretrained_model("ProtRNA_pretrained"), ProtRNA)


# ---- files and directories --------------------------------------------------------------


def test_lm_h5_path_is_recognised_and_loaded(parity_dir):
    model = load_pretrained_model(parity_dir / "lm_tiny.h5", dtype="float64")
    assert isinstance(model, ProtRNA) and model.dtype == torch.float64
    assert model.attention_heads == 2
    assert load_pretrained_model(str(parity_dir / "lm_tiny.h5"), attention_heads=1).attention_heads == 1


def test_head_h5_path_is_recognised(parity_dir):
    head = load_pretrained_model(parity_dir / "sshead_tiny.h5")
    assert type(head).__name__ == "RotaFormer"


def test_directory_round_trip_and_attention_head_check(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "lm")
    model = load_pretrained_model(tmp_path / "lm")
    torch.testing.assert_close(logits(model), logits(tiny_model), rtol=0, atol=0)
    with pytest.raises(ValueError, match="has 2 attention heads, not 4"):
        load_pretrained_model(tmp_path / "lm", attention_heads=4)


def test_convert_h5_writes_a_directory_that_loads(parity_dir, tmp_path):
    out = convert_h5(parity_dir / "lm_tiny.h5", tmp_path / "converted")
    torch.testing.assert_close(
        logits(load_pretrained_model(out)), logits(load_lm_h5(parity_dir / "lm_tiny.h5")), rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["converted"]
    with pytest.raises(FileExistsError, match="not an empty directory"):
        convert_h5(parity_dir / "lm_tiny.h5", out)


def test_original_keyword_dtype_names_and_file_name_hint(parity_dir, tmp_path):
    model = load_pretrained_model(name=str(parity_dir / "lm_tiny.h5"), dtype="bf16")  # the original's name=
    assert model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype 'bf17'"):
        load_pretrained_model(parity_dir / "lm_tiny.h5", dtype="bf17")
    with pytest.raises(TypeError, match="once"):
        load_pretrained_model("ProtRNA_pretrained", name="ProtRNA_pretrained")
    with pytest.raises(FileNotFoundError, match="official weights load by name: 'ProtRNA_pretrained'"):
        load_pretrained_model(tmp_path / "ProtRNA_pretrained.h5")


def test_a_head_directory_is_not_a_language_model(tmp_path):
    from protrna.heads.ss import RotaFormerConfig

    RotaFormer(RotaFormerConfig(input_dim=8, num_blocks=1)).save_pretrained(tmp_path / "head")
    with pytest.raises(ValueError, match="not a ProtRNA language model"):
        ProtRNA.from_pretrained(tmp_path / "head")


def test_conversion_is_deterministic_and_leaves_no_random_contact_head(parity_dir, tmp_path):
    first = convert_h5(parity_dir / "lm_tiny.h5", tmp_path / "one")
    second = convert_h5(parity_dir / "lm_tiny.h5", tmp_path / "two")
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    contact_head = load_pretrained_model(first).lm.esm.contact_head
    assert all(not p.any() for p in contact_head.parameters())  # the original has none
    with pytest.raises(FileNotFoundError, match="missing.h5 does not exist"):
        convert_h5(tmp_path / "missing.h5", tmp_path / "three")


@pytest.mark.filterwarnings("ignore:using .* without checking its md5")
def test_a_damaged_or_wrong_file_in_the_cache_says_how_to_fix_it(parity_dir):
    LM.download_path.parent.mkdir(parents=True)
    LM.download_path.write_bytes((parity_dir / "lm_tiny.h5").read_bytes()[:5000])  # cut short
    with pytest.raises(KerasFormatError, match=rf"cached ProtRNA_pretrained: delete {LM.download_path}"):
        load_pretrained_model("ProtRNA_pretrained")
    shutil.copy(parity_dir / "sshead_tiny.h5", LM.download_path)
    with pytest.raises(KerasFormatError, match="holds a structure head, not ProtRNA_pretrained"):
        load_pretrained_model("ProtRNA_pretrained")
    assert not LM.converted_dir.exists()


@pytest.mark.parametrize("make", ["missing", "text_file", "foreign_dir", "no_config", "other_h5"])
def test_anything_else_is_refused_listing_the_accepted_forms(make, tmp_path):
    target = tmp_path / "thing"
    if make == "text_file":
        target.write_text("ACGU\n")
    elif make == "foreign_dir":
        target.mkdir()
        (target / "config.json").write_text(json.dumps({"model_type": "bert"}))
    elif make == "no_config":
        target.mkdir()
    elif make == "other_h5":
        with h5py.File(target, "w") as h5:
            h5.attrs["layer_names"] = [b"dense", b"dense_1"]
    with pytest.raises((ValueError, FileNotFoundError, KerasFormatError)) as raised:
        load_pretrained_model(target)
    message = str(raised.value)
    assert str(target) in message
    if make != "other_h5":
        assert "ProtRNA_pretrained" in message and "save_pretrained" in message


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_h5_kind_tells_language_model_from_head(parity_dir):
    assert h5_kind(parity_dir / "lm_tiny.h5") == "lm"
    assert h5_kind(parity_dir / "sshead_tiny.h5") == "ss_head"


# ---- the RnaBench heads -----------------------------------------------------------------

#: The defaults of the original's test_downstream_ss_rnabench.py, each the best of its sweep.
RNABENCH_THRESHOLDS = {
    "ssHead_RF_rnabench_bprna": 0.29,
    "ssHead_RF_rnabench_intra": 0.21,
    "ssHead_RF_rnabench_inter": 0.14,
}


def head_variant(source: Path, target: Path, shift: float) -> Path:
    """A copy of a head file, in the same layout, whose output bias is moved by ``shift``: each
    name then has logits of its own, so a name served the wrong file would be noticed."""
    shutil.copy(source, target)
    with h5py.File(target, "a") as h5:
        conv = h5["conv2d"]
        (bias,) = [str(n) for n in conv.attrs["weight_names"] if str(n).endswith("bias:0")]
        conv[bias][...] = conv[bias][...] + shift
    return target


def head_logits(head: RotaFormer) -> torch.Tensor:
    representations = torch.randn(1, 14, head.config.input_dim, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        return head(representations)


def serve(server: LoopbackZenodo, monkeypatch) -> LoopbackZenodo:
    server.start()
    monkeypatch.setenv("PROTRNA_ZENODO_URL", server.url)
    monkeypatch.delenv("PROTRNA_OFFLINE")
    return server


def test_rnabench_heads_load_by_name_with_their_thresholds(parity_dir, tmp_path, monkeypatch):
    server = LoopbackZenodo("14795554")
    files = {}
    for shift, name in enumerate(RNABENCH_THRESHOLDS, start=1):
        weights = OFFICIAL_WEIGHTS[name]
        files[name] = head_variant(parity_dir / "sshead_tiny.h5", tmp_path / weights.filename, 0.5 * shift)
        server.add(weights.filename, files[name].read_bytes())
    serve(server, monkeypatch)
    try:
        heads = {name: load_pretrained_model(name, progress=False) for name in RNABENCH_THRESHOLDS}
    finally:
        server.stop()
    requested = sorted(r["path"] for r in server.file_requests())
    assert requested == sorted(f"/records/14795554/files/{OFFICIAL_WEIGHTS[n].filename}" for n in RNABENCH_THRESHOLDS)

    seen = []
    for name, threshold in RNABENCH_THRESHOLDS.items():
        head = heads[name]
        assert isinstance(head, RotaFormer) and not head.training
        assert head.config.threshold == threshold
        by_path = load_pretrained_model(files[name])
        assert by_path.config.threshold == 0.25  # the file has no threshold; the name brings it
        logits = head_logits(head)
        torch.testing.assert_close(logits, head_logits(by_path), rtol=0, atol=0)
        assert all(not torch.equal(logits, other) for other in seen)  # each name its own file
        seen.append(logits)
        source = json.loads((OFFICIAL_WEIGHTS[name].converted_dir / SOURCE_FILE).read_text())
        assert source["url"].endswith(f"/records/14795554/files/{OFFICIAL_WEIGHTS[name].filename}")

    # Converted once: later loads need no server, and keep the threshold.
    again = load_pretrained_model("ssHead_RF_rnabench_inter", progress=False)
    assert again.config.threshold == 0.14


def test_a_head_its_record_does_not_list_comes_from_the_next_record(parity_dir, monkeypatch):
    weights = OFFICIAL_WEIGHTS["ssHead_RF_rnabench_intra"]
    server = LoopbackZenodo(weights.record)
    server.add("data_ss.zip", b"PK\x05\x06" + bytes(18))  # what 14795554 holds per the original's prepare_data.sh
    server.add(weights.filename, (parity_dir / "sshead_tiny.h5").read_bytes(), record="13888473")
    serve(server, monkeypatch)
    try:
        head = load_pretrained_model(weights.name, progress=False)
    finally:
        server.stop()
    assert head.config.threshold == 0.21
    assert [r["path"] for r in server.file_requests()] == [f"/records/13888473/files/{weights.filename}"]
    assert record_json_path("14795554").is_file() and record_json_path("13888473").is_file()
    source = json.loads((weights.converted_dir / SOURCE_FILE).read_text())
    assert "/records/13888473/" in source["url"]


def test_a_head_no_record_lists_is_an_error_naming_what_each_has(parity_dir, monkeypatch):
    server = LoopbackZenodo("14795554")
    server.add("data_ss.zip", b"zip")
    server.add("ProtRNA_pretrained.h5", b"h5", record="13888473")
    serve(server, monkeypatch)
    try:
        with pytest.raises(DownloadError) as raised:
            load_pretrained_model("ssHead_RF_rnabench_inter", progress=False)
    finally:
        server.stop()
    assert str(raised.value) == (
        "no Zenodo record of ssHead_RF_rnabench_inter (14795554, 13888473) lists "
        "ssHead_RF_rnabench_inter.h5: 14795554 has data_ss.zip; 13888473 has ProtRNA_pretrained.h5"
    )
    assert server.file_requests() == []
    assert not OFFICIAL_WEIGHTS["ssHead_RF_rnabench_inter"].converted_dir.exists()


def test_offline_advice_for_a_head_names_every_record_it_may_be_in():
    with pytest.raises(OfflineError) as raised:
        load_pretrained_model("ssHead_RF_rnabench_bprna")
    message = str(raised.value)
    assert "/records/14795554/files/ssHead_RF_rnabench_bprna.h5" in message
    assert "/records/13888473/files/ssHead_RF_rnabench_bprna.h5" in message
