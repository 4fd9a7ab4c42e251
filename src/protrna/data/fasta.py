"""Streaming FASTA reading: one record at a time, any size, plain or gzip.

Biopython would do, but it is a heavy dependency for twenty lines, and we need line numbers in
error messages and the 3-line ``.dbn`` variant (a structure line after the sequence) that
structure sets use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import re
import shutil
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Iterator, TextIO

_BRACKETS = frozenset("()[]{}<>")

# The free energy (or score) that RNAfold, MXfold2, LinearFold and others print after the
# structure: "((...)) ( -1.20)", "((...)) (-1.2)", "((...)) [-3.40]", "((...))\t-1.2".
_ENERGY = re.compile(r"\s+(?:\(\s*[-+]?\d+(?:\.\d*)?\s*\)|\[\s*[-+]?\d+(?:\.\d*)?\s*\]|[-+]?\d+(?:\.\d*)?)$")


class FastaFormatError(ValueError):
    """The file is not FASTA; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class FastaRecord:
    """One record: ``id`` is the header's first word, ``description`` the rest of the header.

    ``structure`` is set for 3-line ``.dbn`` records (header, sequence, dot-bracket).
    """

    id: str
    sequence: str
    description: str = ""
    structure: str | None = None
    line: int = 0  # line of the header, for error messages

    def __len__(self) -> int:
        return len(self.sequence)


def open_text(path: str | Path) -> TextIO:
    """Open a text file, transparently decompressing ``.gz``; a UTF-8 byte-order mark (as some
    Windows editors write) is dropped."""
    path = Path(path)
    if path.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline=None)
    return open(path, encoding="utf-8-sig", newline=None)


@contextlib.contextmanager
def input_path(path: str | Path) -> Iterator[Path]:
    """``path`` itself, or for ``-`` standard input copied into a temporary file (removed on exit).

    Jobs read their input twice (first to check and index every record, then to process it),
    which a pipe does not allow, hence the copy. ``echo -e ">x\\nGGGAAACCC" | protrna fold - -o out``.
    """
    if str(path) != "-":
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="protrna-") as scratch:
        spooled = Path(scratch) / "stdin"
        source = getattr(sys.stdin, "buffer", None)  # bytes, so that gzip can come through a pipe
        with open(spooled, "wb" if source else "w", **({} if source else {"encoding": "utf-8"})) as sink:
            shutil.copyfileobj(source or sys.stdin, sink)
        with open(spooled, "rb") as handle:
            if handle.read(2) == b"\x1f\x8b":  # gzip's magic number
                spooled = spooled.rename(spooled.with_suffix(".gz"))
        try:
            yield spooled
        except Exception as error:
            # Errors about bad records name the file: name standard input, not the temporary copy.
            if len(error.args) == 1 and str(spooled) in str(error.args[0]):
                raise type(error)(str(error.args[0]).replace(str(spooled), "<stdin>")) from None
            raise


def _is_structure_line(line: str) -> bool:
    """A dot-bracket line: dots, brackets and (pseudoknot) letters, with a bracket or all dots.

    A gapped sequence (``ACGU..ACGU``) has no bracket and is not all dots, so stays sequence.
    """
    if not all(c == "." or c in _BRACKETS or c.isalpha() for c in line):
        return False
    return any(c in _BRACKETS for c in line) or set(line) == {"."}


def read_fasta(path: str | Path) -> Iterator[FastaRecord]:
    """Yield the records of a FASTA (or 3-line dot-bracket) file in order, streaming.

    Sequence lines are joined and stripped of whitespace; blank lines and ``;`` comments are
    ignored. A sequence line before the first header raises :class:`FastaFormatError`.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "x.fa")
    >>> _ = open(path, "w").write(">r1 a tRNA\\nACGU\\nGG\\n>r2\\n\\n")
    >>> [(r.id, r.sequence, r.description) for r in read_fasta(path)]
    [('r1', 'ACGUGG', 'a tRNA'), ('r2', '', '')]
    """
    path = Path(path)
    header: str | None = None
    header_line = 0
    chunks: list[str] = []
    structure: list[str] = []
    raw_structure: list[str] = []  # the same lines as read, in case they turn out to be sequence

    def emit() -> FastaRecord:
        fields = header.split(maxsplit=1)
        record_id = fields[0] if fields else ""
        sequence, dot_bracket = "".join(chunks), "".join(structure) if structure else None
        if dot_bracket is not None and len(dot_bracket) != len(sequence) and not _BRACKETS & set(dot_bracket):
            # Lines of dots (and letters) that do not make a structure of the sequence's length
            # are more sequence: an aligned FASTA with a line of gaps.
            sequence, dot_bracket = sequence + "".join("".join(line.split()) for line in raw_structure), None
        return FastaRecord(
            id=record_id,
            sequence=sequence,
            description=fields[1] if len(fields) > 1 else "",
            structure=dot_bracket,
            line=header_line,
        )

    try:
        with open_text(path) as handle:
            for number, raw in enumerate(handle, start=1):
                line = raw.strip()
                if not line or line.startswith(";"):
                    continue
                if line.startswith(">"):
                    if header is not None:
                        yield emit()
                    header, header_line, chunks, structure, raw_structure = line[1:].strip(), number, [], [], []
                    continue
                if header is None:
                    raise FastaFormatError(
                        f"{path}, line {number}: sequence before the first '>' header; "
                        "is this a FASTA file?"
                    )
                if chunks:
                    bare = _ENERGY.sub("", line)
                    if structure or _is_structure_line(bare):
                        structure.append(bare)
                        raw_structure.append(line)
                        continue
                chunks.append("".join(line.split()))
    except UnicodeDecodeError as error:
        raise FastaFormatError(f"{path}: not a text file ({error})") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise FastaFormatError(f"{path}: damaged or not gzip data ({error})") from None
    if header is not None:
        yield emit()
