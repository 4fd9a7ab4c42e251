"""The one resume mechanism (protrna.runtime.resume): settings records, the 'other run' message,
atomic side files and torn tails of line files."""

import json

import h5py
import numpy as np
import pytest

from protrna import __version__
from protrna.digest import records_digest
from protrna.runtime.resume import (
    LineJournal,
    OtherRunError,
    check_same_run,
    commit,
    partial_path,
    plain,
    read_settings_file,
    run_settings,
    settings_changes,
    write_atomic,
    write_settings_file,
)

RECORDS = [("a", "ACGU"), ("b", "GGGAAACCC")]


def test_settings_record_carries_the_input_digest_and_version():
    record = run_settings({"dtype": "float32", "threshold": 0.25}, RECORDS)
    assert record["input_sha256"] == records_digest(RECORDS)
    assert record["protrna_version"] == __version__
    assert record["dtype"] == "float32" and record["threshold"] == 0.25
    assert run_settings({}, RECORDS[:1])["input_sha256"] != record["input_sha256"]


def test_one_line_names_every_changed_setting_and_input(tmp_path):
    then = run_settings({"dtype": "float32", "threshold": 0.25, "layers": [1, 2]}, RECORDS)
    now = run_settings({"dtype": "bfloat16", "threshold": 0.25, "layers": [1, 2]}, RECORDS[::-1])
    with pytest.raises(OtherRunError) as refused:
        check_same_run(tmp_path / "out.h5", then, now, finished=False)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'out.h5'} was started with other settings: ")
    assert "dtype (then 'float32', now 'bfloat16')" in message
    assert "the input records (ids or sequences) changed (input_sha256)" in message
    assert "threshold" not in message and "layers" not in message  # unchanged: not named
    assert "resume" in message  # what to do next
    assert isinstance(refused.value, FileExistsError)  # callers that catch the old error still do
    with pytest.raises(OtherRunError, match="was made with other settings"):
        check_same_run(tmp_path / "out.h5", then, now, finished=True)


def test_the_same_run_passes_whatever_the_version_and_the_storage_types(tmp_path):
    then = dict(run_settings({"layers": [0, 33], "dtype": "float32"}, RECORDS), protrna_version="0.0.1")
    with h5py.File(tmp_path / "x.h5", "w") as h5:  # HDF5 gives numpy arrays and scalars back
        h5.attrs.update(then)
        recorded = {key: plain(value) for key, value in h5.attrs.items()}
    now = run_settings({"layers": (0, 33), "dtype": "float32"}, RECORDS)
    assert recorded["protrna_version"] != now["protrna_version"]
    check_same_run(tmp_path / "x.h5", recorded, now, finished=False)  # no error
    assert settings_changes(recorded, now) == []


def test_a_setting_the_record_lacks_is_a_change():
    assert settings_changes({}, {"plot": True}) == ["plot (then None, now True)"]
    assert settings_changes({"k": "x"}, {"k": "y"}, words={"k": "the cache key"}) == ["the cache key changed (k)"]


def test_settings_file_and_atomic_writes(tmp_path):
    path = tmp_path / "settings.json"
    assert read_settings_file(path) is None
    write_settings_file(path, {"threshold": 0.5})
    assert json.loads(path.read_text()) == {"threshold": 0.5}
    path.write_text("{torn")
    assert read_settings_file(path) is None  # unreadable: the caller treats it as no record
    write_atomic(path, "new\n")
    assert path.read_text() == "new\n" and not list(tmp_path.glob("*.tmp"))
    partial = partial_path(tmp_path / "out.tsv")
    assert partial.name == "out.tsv.partial"
    partial.write_text("done\n")
    commit(partial, tmp_path / "out.tsv")
    assert (tmp_path / "out.tsv").read_text() == "done\n" and not partial.exists()


@pytest.mark.parametrize("tail", [b">c\nGG", b">c\nGG\n", b">c\nGG\n..", b"\xff\xfe\n\n\n", b"garbage\n"])
def test_a_torn_last_record_is_cut_off_and_the_complete_ones_kept(tmp_path, tail):
    journal = LineJournal(tmp_path / "p.dbn.partial", lines=3)
    journal.start([])
    with journal.appending() as sink:
        sink.append([">a", "GGAUCC", "((..))"])
        sink.append([">b", "ACGU", "...."])
    whole = journal.path.read_bytes()
    with open(journal.path, "ab") as handle:
        handle.write(tail)

    def complete(lines):
        return lines[0].startswith(">") and len(lines[1]) == len(lines[2]) > 0

    header, records = journal.read(complete)
    assert header == [] and records == [[">a", "GGAUCC", "((..))"], [">b", "ACGU", "...."]]
    assert journal.path.read_bytes() == whole  # the torn part is gone from the file
    with journal.appending() as sink:  # appending goes on after the last complete record
        sink.append([">c", "GG", ".."])
    assert journal.read(complete)[1][-1] == [">c", "GG", ".."]


def test_header_lines_and_finish(tmp_path):
    journal = LineJournal(tmp_path / "t.tsv.partial", lines=1, header_lines=2)
    assert journal.read() == ([], [])  # nothing yet
    journal.start(["# settings: {}", "id\tf1"], [["x\t0.5"]])
    with journal.appending() as sink:
        sink.append(["y\t0.25"])
    assert journal.read() == (["# settings: {}", "id\tf1"], [["x\t0.5"], ["y\t0.25"]])
    journal.path.write_text("# settings: {}")  # torn inside the header: nothing to resume
    assert journal.read() == ([], [])
    journal.finish(tmp_path / "t.tsv", "id\tf1\nx\t0.5\n")
    assert (tmp_path / "t.tsv").read_text() == "id\tf1\nx\t0.5\n" and not journal.exists()


def test_plain_values_compare_like_the_jobs_own():
    assert plain(np.array([1, 2])) == [1, 2]
    assert plain(np.float32(0.5)) == 0.5 and plain(np.bool_(True)) is True
    assert plain(b"abc") == "abc" and plain((1, np.int64(2))) == [1, 2]
