"""Labelled RNAs for fine-tuning: FASTA with the label in the header, or CSV/TSV columns.

* FASTA (plain or ``.gz``): the label is the header's first word (nRC's headers are the class
  name, e.g. ``>5S_rRNA``), or what ``label_regex`` finds in the whole header line (its first
  group if it has one). Ids need not be unique: records are told apart by their position in the
  file, ``index``.
* CSV / TSV: ``sequence_column`` and ``label_column`` (and optionally ``id_column``) by name.
  For ``token-classification`` the label is one class per nucleotide: a string of exactly one
  character per nucleotide (``"..((..))"``, ``"0011"``), or a list split on ``label_separator``
  (default: whitespace, commas or semicolons) with one entry per nucleotide.

Every problem stops the run with a message naming file, record and line: a letter that is no
nucleotide code (or, with ``skip_invalid``, the record is logged and left out), an empty
sequence, a missing column or label, a label that is not a number (regression), a label list of
the wrong length.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import re
from pathlib import Path
from typing import Union

from ..alphabet import encode_rna
from .fasta import open_text, read_fasta
from .records import InvalidRecordError

logger = logging.getLogger(__name__)

TASKS = ("classification", "regression", "token-classification")
FORMATS = ("auto", "fasta", "csv", "tsv")
_FASTA_SUFFIXES = {".fa", ".fasta", ".fna", ".fas", ".ffn", ".dbn"}

Label = Union[str, float, tuple[str, ...], None]


@dataclasses.dataclass(frozen=True)
class LabelledRecord:
    """One RNA with its label: a class name, a value, or one class per nucleotide (``None`` when
    reading without labels). ``index`` is the record's position among the file's records."""

    index: int
    id: str
    sequence: str
    label: Label
    source: str

    def __len__(self) -> int:
        return len(self.sequence)


@dataclasses.dataclass(frozen=True)
class InputFormat:
    """How to read a labelled file (see the module docstring); kept with a fine-tuned model so
    that prediction reads new files the same way."""

    file_format: str = "auto"
    sequence_column: str = "sequence"
    label_column: str = "label"
    id_column: str | None = None
    label_regex: str | None = None
    label_separator: str | None = None

    def resolved_format(self, path: Path) -> str:
        if self.file_format != "auto":
            return self.file_format
        suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
        suffix = suffixes[-1] if suffixes else ""
        if suffix in _FASTA_SUFFIXES:
            return "fasta"
        if suffix in (".csv", ".tsv", ".tab"):
            return "csv" if suffix == ".csv" else "tsv"
        with open_text(path) as handle:
            first = next((line for line in handle if line.strip()), "")
        if first.startswith(">"):
            return "fasta"
        return "tsv" if "\t" in first else "csv"


def read_labelled(
    path: str | Path,
    task: str,
    input_format: InputFormat = InputFormat(),
    *,
    labels_required: bool = True,
    skip_invalid: bool = False,
) -> list[LabelledRecord]:
    """The records of ``path`` with labels parsed for ``task``.

    With ``labels_required=False`` (prediction), records without a label get ``None``, and a
    label that cannot be parsed is an error only if labels are required.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "x.fa")
    >>> _ = open(path, "w").write(">tRNA\\nGCGGAUUUAG\\n>tRNA\\nGCCGAUAUAG\\n>miRNA\\nUGAGGUAGUA\\n")
    >>> [(r.index, r.label) for r in read_labelled(path, "classification")]
    [(0, 'tRNA'), (1, 'tRNA'), (2, 'miRNA')]
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    file_format = input_format.resolved_format(path)
    if file_format == "fasta":
        raw = _fasta_rows(path, task, input_format, labels_required)
    else:
        raw = _table_rows(path, file_format, input_format, labels_required)
    records: list[LabelledRecord] = []
    skipped = 0
    for index, (record_id, sequence, label_text, source) in enumerate(raw):
        try:
            if not sequence:
                raise ValueError("empty sequence")
            encode_rna(sequence)
        except ValueError as error:
            if not skip_invalid:
                raise InvalidRecordError(f"{source}: {error}; fix it or pass --invalid skip (--skip-invalid)") from None
            logger.warning("skipped %s: %s", source, error)
            skipped += 1
            continue
        label = None
        if label_text is not None:
            try:
                label = parse_label(label_text, task, len(sequence), source, input_format.label_separator)
            except InvalidRecordError:
                if labels_required:
                    raise
        elif labels_required:
            raise InvalidRecordError(f"{source}: no label")
        records.append(LabelledRecord(index, record_id, sequence, label, source))
    if not records:
        raise InvalidRecordError(f"{path}: no usable records")
    if skipped:
        logger.info("%s: %d records with invalid sequences skipped", path, skipped)
    return records


def parse_label(text: str, task: str, length: int, source: str, separator: str | None = None) -> Label:
    """The label of one record from its text, checked for ``task``.

    >>> parse_label(" 1.5 ", "regression", 4, "r")
    1.5
    >>> parse_label("..()", "token-classification", 4, "r"), parse_label("0 1 1 0", "token-classification", 4, "r")
    (('.', '.', '(', ')'), ('0', '1', '1', '0'))
    """
    text = text.strip()
    if not text:
        raise InvalidRecordError(f"{source}: empty label")
    if task == "classification":
        return text
    if task == "regression":
        try:
            value = float(text)
        except ValueError:
            raise InvalidRecordError(f"{source}: label {text!r} is not a number (task regression)") from None
        if not math.isfinite(value):
            raise InvalidRecordError(f"{source}: label {text!r} is not a finite number")
        return value
    if separator is not None:
        parts = [part.strip() for part in text.split(separator)]
    elif len(text) == length:
        parts = list(text)
    else:
        parts = [part for part in re.split(r"[\s,;]+", text) if part]
        if len(parts) == 1:  # no separator: one character per nucleotide was meant
            parts = list(text)
    if len(parts) != length or any(not part for part in parts):
        raise InvalidRecordError(
            f"{source}: {len(parts)} per-nucleotide labels for a {length}-nt sequence; give one "
            "character per nucleotide, or a list separated by spaces, commas or --label-separator"
        )
    return tuple(parts)


def _fasta_rows(path: Path, task: str, input_format: InputFormat, labels_required: bool):
    if task == "token-classification":
        raise InvalidRecordError(
            f"{path}: per-nucleotide labels cannot come from a FASTA header; give a CSV/TSV file "
            "with a sequence column and a label column"
        )
    try:
        pattern = re.compile(input_format.label_regex) if input_format.label_regex else None
    except re.error as error:
        raise ValueError(f"--label-regex {input_format.label_regex!r} is not a regular expression: {error}") from None
    for record in read_fasta(path):
        source = f"{path}, record {record.id!r} (line {record.line})"
        header = f"{record.id} {record.description}".strip()
        if pattern is None:
            label = record.id or None
        else:
            match = pattern.search(header)
            if match is None:
                if labels_required:
                    raise InvalidRecordError(
                        f"{source}: --label-regex {input_format.label_regex!r} does not match the header {header!r}"
                    )
                label = None
            else:
                label = match.group(1) if pattern.groups else match.group(0)
        yield record.id, record.sequence, label, source


def _table_rows(path: Path, file_format: str, input_format: InputFormat, labels_required: bool):
    delimiter = "," if file_format == "csv" else "\t"
    with open_text(path) as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        columns = reader.fieldnames or []
        wanted = [input_format.sequence_column]
        if labels_required:
            wanted.append(input_format.label_column)
        if input_format.id_column:
            wanted.append(input_format.id_column)
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise InvalidRecordError(
                f"{path}: no column {', '.join(map(repr, missing))} (columns: {', '.join(columns) or 'none'}); "
                "choose them with --sequence-column / --label-column / --id-column"
            )
        has_labels = input_format.label_column in columns
        for number, row in enumerate(reader):
            record_id = row.get(input_format.id_column) if input_format.id_column else None
            record_id = record_id if record_id else str(number)
            source = f"{path}, record {record_id!r} (line {reader.line_num})"
            sequence = "".join((row.get(input_format.sequence_column) or "").split())
            label = row.get(input_format.label_column) if has_labels else None
            if label is not None and not label.strip():
                label = None
            yield record_id, sequence, label, source
