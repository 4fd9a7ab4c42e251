"""Downloads against a real HTTP server on loopback (tests/loopback_zenodo.py)."""

from __future__ import annotations

import hashlib
import json
import socket
import time

import pytest

from protrna.weights.download import (
    ChecksumError,
    DownloadError,
    OfflineError,
    download,
    parse_record,
    zenodo_record_files,
)
from protrna.weights.registry import OFFICIAL_WEIGHTS, cache_root, record_json_path
from tests.loopback_zenodo import LoopbackZenodo

RECORD = "13888473"
PAYLOAD = bytes(range(256)) * 40 + b"tail"  # 10,244 bytes, every offset distinguishable
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


@pytest.fixture
def zenodo(monkeypatch):
    server = LoopbackZenodo(RECORD)
    server.add("weights.h5", PAYLOAD)
    server.start()
    monkeypatch.setenv("PROTRNA_ZENODO_URL", server.url)
    monkeypatch.delenv("PROTRNA_OFFLINE")
    yield server
    server.stop()


def file_url(server: LoopbackZenodo, name: str = "weights.h5") -> str:
    return f"{server.url}/records/{RECORD}/files/{name}"


def fast(**kwargs):
    return {"progress": False, "backoff": 0.0, **kwargs}


def test_complete_download(zenodo, tmp_path):
    dest = download(file_url(zenodo), tmp_path / "weights.h5", md5=PAYLOAD_MD5, **fast())
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.h5"]
    assert [r["range"] for r in zenodo.file_requests()] == [None]
    # A complete destination with the right md5 is not fetched again.
    download(file_url(zenodo), dest, md5=f"md5:{PAYLOAD_MD5.upper()}", **fast())
    assert len(zenodo.file_requests()) == 1


def test_interrupted_download_resumes_with_a_range(zenodo, tmp_path):
    dest = tmp_path / "weights.h5"
    zenodo.cut_after = 3000
    with pytest.raises(DownloadError, match="3000 bytes received"):
        download(file_url(zenodo), dest, md5=PAYLOAD_MD5, **fast(retries=0))
    part = tmp_path / "weights.h5.part"
    assert not dest.exists() and part.read_bytes() == PAYLOAD[:3000]

    download(file_url(zenodo), dest, md5=PAYLOAD_MD5, **fast())
    assert zenodo.file_requests()[-1]["range"] == "bytes=3000-"
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_retry_within_one_call_resumes(zenodo, tmp_path):
    zenodo.cut_after = 1234
    dest = download(file_url(zenodo), tmp_path / "w.h5", md5=PAYLOAD_MD5, **fast(retries=1))
    assert dest.read_bytes() == PAYLOAD
    assert [r["range"] for r in zenodo.file_requests()] == [None, "bytes=1234-"]


def test_server_ignoring_range_restarts_cleanly(zenodo, tmp_path):
    dest = tmp_path / "weights.h5"
    (tmp_path / "weights.h5.part").write_bytes(b"garbage, not a prefix of the file")
    zenodo.ignore_range = True
    download(file_url(zenodo), dest, md5=PAYLOAD_MD5, **fast())
    assert zenodo.file_requests()[-1]["range"] == "bytes=33-"  # asked, but got a 200
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_answered_with_416_is_verified_and_moved(zenodo, tmp_path):
    (tmp_path / "weights.h5.part").write_bytes(PAYLOAD)
    # No size given, so the downloader has to ask; the server says there is nothing left.
    dest = download(file_url(zenodo), tmp_path / "weights.h5", md5=PAYLOAD_MD5, **fast())
    assert zenodo.file_requests()[-1]["range"] == f"bytes={len(PAYLOAD)}-"
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "weights.h5.part").exists()


def test_complete_part_of_known_size_needs_no_request(zenodo, tmp_path):
    (tmp_path / "weights.h5.part").write_bytes(PAYLOAD)
    download(file_url(zenodo), tmp_path / "weights.h5", md5=PAYLOAD_MD5, size=len(PAYLOAD), **fast())
    assert zenodo.file_requests() == []


def test_wrong_checksum_raises_and_leaves_nothing(zenodo, tmp_path):
    wrong = "0" * 32
    with pytest.raises(ChecksumError) as raised:
        download(file_url(zenodo), tmp_path / "weights.h5", md5=wrong, **fast())
    message = str(raised.value)
    assert "weights.h5" in message and wrong in message and PAYLOAD_MD5 in message
    assert list(tmp_path.iterdir()) == []


def test_checksum_covers_the_bytes_already_in_the_part(zenodo, tmp_path):
    # A damaged prefix (same length as the real one) is resumed from, so only the md5 can notice.
    (tmp_path / "weights.h5.part").write_bytes(b"x" * 3000)
    with pytest.raises(ChecksumError, match=PAYLOAD_MD5):
        download(file_url(zenodo), tmp_path / "weights.h5", md5=PAYLOAD_MD5, **fast())
    assert zenodo.file_requests()[-1]["range"] == "bytes=3000-"
    assert list(tmp_path.iterdir()) == []


def test_existing_destination_with_wrong_md5_is_downloaded_again(zenodo, tmp_path):
    (tmp_path / "weights.h5").write_bytes(b"stale")
    dest = download(file_url(zenodo), tmp_path / "weights.h5", md5=PAYLOAD_MD5, **fast())
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize("status, words", [(404, "no such file"), (403, "refuses access")])
def test_missing_or_forbidden_fails_at_once(zenodo, tmp_path, status, words):
    url = file_url(zenodo, "absent.h5") if status == 404 else file_url(zenodo)
    zenodo.statuses = [403] if status == 403 else []
    with pytest.raises(DownloadError, match=f"HTTP {status}.*{words}"):
        download(url, tmp_path / "x.h5", **fast(retries=3))
    assert len(zenodo.file_requests()) == 1  # not retried
    assert list(tmp_path.iterdir()) == []


def test_server_errors_are_retried(zenodo, tmp_path):
    zenodo.statuses = [503, 502]
    dest = download(file_url(zenodo), tmp_path / "w.h5", md5=PAYLOAD_MD5, **fast(retries=2))
    assert dest.read_bytes() == PAYLOAD and len(zenodo.file_requests()) == 3
    zenodo.statuses = [503, 503]
    with pytest.raises(DownloadError, match="2 attempt"):
        download(file_url(zenodo), tmp_path / "v.h5", md5=PAYLOAD_MD5, **fast(retries=1))


def test_silent_server_times_out_and_is_retried(zenodo, tmp_path):
    zenodo.stall = 2.0
    started = time.monotonic()
    dest = download(file_url(zenodo), tmp_path / "w.h5", md5=PAYLOAD_MD5, **fast(timeout=0.3))
    assert time.monotonic() - started < 1.8
    assert dest.read_bytes() == PAYLOAD and len(zenodo.file_requests()) == 2


def test_unreachable_host_fails_at_once(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match="cannot reach"):
        download(f"http://127.0.0.1:{port}/w.h5", tmp_path / "w.h5", **fast(retries=5, backoff=10.0))


def test_progress_bar_goes_to_stderr_unless_quiet(zenodo, tmp_path, capsys):
    download(file_url(zenodo), tmp_path / "a.h5", progress=True)
    captured = capsys.readouterr()
    assert "a.h5" in captured.err and captured.out == ""
    download(file_url(zenodo), tmp_path / "b.h5", progress=False)
    assert capsys.readouterr().err == ""


# ---- the Zenodo record ------------------------------------------------------------------


def test_record_is_fetched_once_then_read_from_the_cache(zenodo):
    files = zenodo_record_files(RECORD, backoff=0.0)
    assert files["weights.h5"].md5 == PAYLOAD_MD5 and files["weights.h5"].size == len(PAYLOAD)
    cached = record_json_path(RECORD)
    assert cached.parent == cache_root() / "downloads"
    assert json.loads(cached.read_text())["files"][0]["key"] == "weights.h5"

    zenodo.stop()
    assert zenodo_record_files(RECORD) == files


def test_record_from_a_silent_network_gives_up_after_three_tries(monkeypatch):
    # A listener that accepts connections and never answers: a firewall that drops packets.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("PROTRNA_ZENODO_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.delenv("PROTRNA_OFFLINE")
        with pytest.raises(DownloadError, match=r"after 3 attempts"):
            zenodo_record_files(RECORD, timeout=0.2, backoff=0.0)


def test_record_offline_without_cache_fails_at_once(monkeypatch):
    monkeypatch.setenv("PROTRNA_OFFLINE", "1")
    with pytest.raises(OfflineError, match=f"zenodo-{RECORD}.json"):
        zenodo_record_files(RECORD)


def test_parse_record_reads_both_zenodo_layouts():
    entry = {"key": "a.h5", "size": 5, "checksum": "md5:" + "ab" * 16, "links": {"self": "u"}}
    legacy = parse_record({"files": [entry, {"key": "b.h5", "size": 1, "checksum": "sha256:00"}]})
    rdm = parse_record({"files": {"enabled": True, "entries": {"a.h5": entry}}})
    assert legacy["a.h5"] == rdm["a.h5"] and legacy["a.h5"].md5 == "ab" * 16
    assert legacy["b.h5"].md5 is None
    with pytest.raises(ValueError, match="no list of files"):
        parse_record({"metadata": {}})


def test_registry_urls_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PROTRNA_ZENODO_URL", "http://mirror.example/zenodo/")
    monkeypatch.setenv("PROTRNA_HOME", str(tmp_path / "home"))
    weights = OFFICIAL_WEIGHTS["ProtRNA_pretrained"]
    assert weights.url == "http://mirror.example/zenodo/records/13888473/files/ProtRNA_pretrained.h5"
    assert weights.download_path == tmp_path / "home" / "downloads" / "ProtRNA_pretrained.h5"
    assert weights.converted_dir == tmp_path / "home" / "models" / "ProtRNA_pretrained"


def test_cache_root_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("PROTRNA_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "protrna"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    assert cache_root() == tmp_path / "me" / ".cache" / "protrna"
