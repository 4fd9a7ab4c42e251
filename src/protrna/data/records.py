"""RNA records a job can use: FASTA records checked for what would break or mislead a run.

A record is refused when its header has no id, its id repeats an earlier one, its sequence is
empty, or it holds a letter that is not a nucleotide code (see :func:`protrna.alphabet.encode_rna`).
Jobs stop at the first such record, naming file, record and line, or with ``skip_invalid`` log it
and leave it out. With ``unique_ids``, a repeated id is numbered instead (``x``, ``x-2``, ``x-3``):
some datasets (nRC) use the class name as every record's id.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Iterable, Iterator

from ..alphabet import encode_rna
from .fasta import FastaRecord, read_fasta

log = logging.getLogger(__name__)


class InvalidRecordError(ValueError):
    """A FASTA record cannot be used; the message names the file, record and problem."""


def checked_records(path: str | Path, unique_ids: bool = False) -> Iterator[tuple[FastaRecord, str | None]]:
    """Each record of ``path`` with what is wrong with it (``None`` if it is usable); with
    ``unique_ids`` a repeated id is numbered (the same way on every pass over the file)."""
    first_line: dict[str, int] = {}
    for record in read_fasta(path):
        if unique_ids and record.id in first_line:
            number, renamed = 2, f"{record.id}-2"
            while renamed in first_line:
                number += 1
                renamed = f"{record.id}-{number}"
            record = dataclasses.replace(record, id=renamed)
        problem = None
        if not record.id:
            problem = "the header has no id"
        elif record.id in first_line:
            problem = f"duplicate id (first seen at line {first_line[record.id]}; --unique-ids numbers them)"
        elif not record.sequence:
            problem = "empty sequence"
        else:
            try:
                encode_rna(record.sequence, record.id)
            except ValueError as error:
                problem = str(error)
        if problem is None:
            first_line[record.id] = record.line
        yield record, problem


def valid_records(
    path: str | Path, skip_invalid: bool = False, skipped: list[str] | None = None, unique_ids: bool = False
) -> Iterator[FastaRecord]:
    """The usable records of ``path``, in order.

    An unusable record raises :class:`InvalidRecordError`; with ``skip_invalid`` it is logged,
    its message appended to ``skipped`` (when given), and left out.
    """
    for record, problem in checked_records(path, unique_ids):
        if problem is None:
            yield record
            continue
        message = f"{path}, record {record.id!r} (line {record.line}): {problem}"
        if not skip_invalid:
            raise InvalidRecordError(message + "; fix it or pass --invalid skip (--skip-invalid) to leave it out")
        log.warning("skipped %s", message)
        if skipped is not None:
            skipped.append(message)
