"""The one resume mechanism of the jobs (``embed``, ``fold``, ``evaluate --per-sequence`` and
``--report``'s row caches, ``score``, the training feature cache, and the training loop's
``log.jsonl`` and ``run.json``; the loop's checkpoints are accelerate's).

A job that can be interrupted works like this:

1. It describes its run as a **settings record**: a flat dict of every option that changes the
   numbers, plus a digest of the input records (:func:`run_settings`) and the protrna version.
2. It writes into a side file ``OUT.partial`` (:func:`partial_path`) and stores the record beside
   or inside it (HDF5 attributes, a JSON file, a header line). A rerun compares the recorded
   settings with its own (:func:`check_same_run`): equal means resume, different means ONE line
   that names what changed, e.g. ``out.h5 was started with other settings: dtype (then
   'float32', now 'bfloat16'), the input records (ids or sequences) changed (input_sha256). ...``
   The protrna version is recorded but never compared: another version computes the same numbers.
3. Line files are appended one flushed write per record, so a kill tears at most the last record;
   :class:`LineJournal` reads the complete records back and cuts a torn tail off the file.
4. When every record is in, the final file is written next to it and renamed over ``OUT``
   (:func:`write_atomic`, :func:`commit`), so a file at the output path is always complete.

The batch plan of each job depends only on its input and settings, never on what is done (see
:mod:`.encoder`); together with the above, a resumed run's output equals an uninterrupted run's
bit for bit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from .. import __version__
from ..digest import records_digest

#: Recorded in every settings record, never compared.
VERSION_KEY = "protrna_version"
#: What a changed digest means, in words (a job may pass its own, e.g. "the variants file's rows").
DIGEST_WORDS = {
    "input_sha256": "the input records (ids or sequences)",
    "reference_sha256": "the reference records (ids, sequences or pairs)",
}


class OtherRunError(FileExistsError):
    """The output on disk belongs to a run with other settings or other input."""


def partial_path(path: str | Path) -> Path:
    """Where a job writes ``path`` until it is complete.

    >>> partial_path("out/x.h5")
    PosixPath('out/x.h5.partial')
    """
    path = Path(path)
    return path.with_name(path.name + ".partial")


def run_settings(settings: Mapping, records: Iterable[tuple[str, str]] | None = None) -> dict:
    """``settings`` plus ``input_sha256`` (of ``records``, ``(id, sequence)`` in order) and the
    protrna version: the record a job stores and a rerun compares.

    >>> record = run_settings({"dtype": "float32"}, [("a", "ACGU")])
    >>> sorted(record), record["input_sha256"] == records_digest([("a", "ACGU")])
    (['dtype', 'input_sha256', 'protrna_version'], True)
    """
    record = dict(settings)
    if records is not None:
        record["input_sha256"] = records_digest(records)
    record[VERSION_KEY] = __version__
    return record


def plain(value):
    """A value read back from HDF5 attributes or JSON as plain Python (lists, ints, str), so
    that it compares equal to what the job has in memory."""
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def settings_changes(recorded: Mapping, wanted: Mapping, words: Mapping[str, str] | None = None) -> list[str]:
    """What differs between a recorded run and this one, in words, in ``wanted``'s key order.

    >>> settings_changes({"dtype": "float32", "input_sha256": "a"}, {"dtype": "bfloat16", "input_sha256": "b"})
    ["dtype (then 'float32', now 'bfloat16')", 'the input records (ids or sequences) changed (input_sha256)']
    """
    words = {**DIGEST_WORDS, **(words or {})}
    changes = []
    for key, value in wanted.items():
        if key == VERSION_KEY or plain(recorded.get(key)) == plain(value):
            continue
        if key in words or key.endswith("_sha256"):
            changes.append(f"{words.get(key, key)} changed ({key})")
        else:
            changes.append(f"{key} (then {plain(recorded.get(key))!r}, now {plain(value)!r})")
    return changes


def check_same_run(path: str | Path, recorded: Mapping, wanted: Mapping, *, finished: bool,
                   words: Mapping[str, str] | None = None) -> None:
    """Raise :class:`OtherRunError` (one line naming what changed) unless ``recorded`` settings
    equal ``wanted`` ones; ``finished`` says whether ``path`` is a complete output."""
    changes = settings_changes(recorded, wanted, words)
    if changes:
        raise OtherRunError(
            f"{path} was {'made' if finished else 'started'} with other settings: {', '.join(changes)}. "
            + ("Choose another output, or remove it to redo it." if finished else
               "Rerun with the original settings to resume, or choose another output (or remove it) to "
               "start over.")
        )


def read_settings_file(path: str | Path) -> dict | None:
    """The settings record stored as JSON at ``path``; ``None`` if missing or unreadable."""
    try:
        recorded = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def write_settings_file(path: str | Path, settings: Mapping) -> None:
    write_atomic(path, json.dumps(dict(settings), indent=2) + "\n")


def write_atomic(path: str | Path, text: str | bytes) -> None:
    """Write ``path`` through ``path.tmp`` and a rename: a kill leaves the old file or the new
    one, never half of one."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    if isinstance(text, bytes):
        temporary.write_bytes(text)
    else:
        temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def commit(partial: str | Path, final: str | Path) -> None:
    """The side file is complete: it becomes the output (one rename, atomic on one file system)."""
    os.replace(partial, final)


class LineJournal:
    """A text side file of records, ``lines`` lines each, after ``header_lines`` header lines.

    A job appends one record per flushed write (:meth:`append`), so a kill tears at most the
    last record; :meth:`read` returns the complete records and cuts anything after them (a torn
    record, or one ``accept`` refuses) off the file.

    >>> import tempfile
    >>> journal = LineJournal(Path(tempfile.mkdtemp()) / "x.partial", lines=2)
    >>> journal.start([])
    >>> with journal.appending() as sink:
    ...     sink.append(["a", "1"])
    >>> _ = journal.path.open("a").write("b\\n2")  # torn by a kill
    >>> journal.read()
    ([], [['a', '1']])
    """

    def __init__(self, path: str | Path, lines: int = 1, header_lines: int = 0):
        self.path, self.lines, self.header_lines = Path(path), lines, header_lines

    def exists(self) -> bool:
        return self.path.exists()

    def read(self, accept: Callable[[list[str]], bool] = lambda record: True) -> tuple[list[str], list[list[str]]]:
        """``(header, records)`` of the file (empty if it does not exist), torn tail cut off."""
        if not self.path.exists():
            return [], []
        data = self.path.read_bytes()
        position = 0
        header: list[str] = []
        for _ in range(self.header_lines):
            end = data.find(b"\n", position)
            if end < 0:
                return [], []  # not even a header: the caller starts over
            header.append(data[position:end].decode("utf-8"))
            position = end + 1
        records: list[list[str]] = []
        kept = position
        while True:
            ends = []
            for _ in range(self.lines):
                end = data.find(b"\n", position)
                if end < 0:
                    break
                ends.append(end)
                position = end + 1
            if len(ends) < self.lines:
                break
            try:
                record = data[kept : ends[-1]].decode("utf-8").split("\n")
            except UnicodeDecodeError:
                break
            if not accept(record):
                break
            records.append(record)
            kept = ends[-1] + 1
        if kept < len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(kept)
        return header, records

    def start(self, header: Iterable[str], records: Iterable[Iterable[str]] = ()) -> None:
        """(Re)write the file whole: ``header`` then ``records``, through a rename."""
        text = "".join(f"{line}\n" for line in header)
        text += "".join(f"{line}\n" for record in records for line in record)
        write_atomic(self.path, text)

    def appending(self) -> "_Appender":
        return _Appender(self.path)

    def finish(self, final: str | Path, text: str) -> None:
        """Write the finished output ``final`` atomically, then remove the journal."""
        write_atomic(final, text)
        self.path.unlink(missing_ok=True)


class _Appender:
    """An open journal, appended to one record per flushed write; a context manager, or closed
    with :meth:`close`."""

    def __init__(self, path: Path):
        self.handle = open(path, "a", encoding="utf-8", newline="")

    def __enter__(self) -> "_Appender":
        return self

    def append(self, record: Iterable[str]) -> None:
        # One write per record, flushed: a kill can tear at most this record.
        self.handle.write("".join(f"{line}\n" for line in record))
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()

    def __exit__(self, *exc) -> None:
        self.close()
