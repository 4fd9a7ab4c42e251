"""RNA secondary structures: base pairs, matrices, dot-bracket/bpseq/ct, reference sets, decoding.

The one representation is :class:`BasePairs`: the sequence length and a sorted ``(n, 2)`` array of
0-based pairs ``(i, j)`` with ``i < j``. It allows a base to have several partners, because
reference sets from crystal structures have them (base triples) and because the original
protocol scores thresholded probability maps as they are. Formats that cannot say that
(dot-bracket, bpseq, ct) refuse such structures with an error naming the base; turn a
prediction into one-partner pairs with :func:`resolve_conflicts` first.

Positions in error messages are 1-based, as in the files.

>>> pairs = BasePairs.from_dot_bracket("(((.[[..)))..]]")
>>> pairs.to_list()
[(0, 10), (1, 9), (2, 8), (4, 14), (5, 13)]
>>> pairs.to_dot_bracket()
'(((.[[..)))..]]'
"""

from __future__ import annotations

import csv
import dataclasses
import string
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .alphabet import encode_rna
from .data.fasta import read_fasta
from .sparse_pairs import SparsePairProbabilities

#: Probability above which the original counts a pair (chosen on VL0 for the released head).
DEFAULT_THRESHOLD = 0.25

# Bracket types in the order pages get them: nested pairs always use the first, "()".
_PAGES: tuple[tuple[str, str], ...] = (("(", ")"), ("[", "]"), ("{", "}"), ("<", ">")) + tuple(
    (upper, upper.lower()) for upper in string.ascii_uppercase
)
_OPENING = {open_: page for page, (open_, _) in enumerate(_PAGES)}
_CLOSING = {close: page for page, (_, close) in enumerate(_PAGES)}

_CANONICAL_PAIRS = frozenset({"AU", "UA", "GC", "CG", "GU", "UG"})


class StructureError(ValueError):
    """A structure or structure file is malformed; the message names the input and position."""


def _where(source: str) -> str:
    return f"{source}: " if source else ""


class BasePairs:
    """Base pairs of one RNA: ``length`` and ``pairs``, an ``(n, 2)`` array of 0-based ``i < j``.

    Pairs are stored sorted and deduplicated, each as ``(min, max)``, so two ``BasePairs`` of
    the same structure compare equal whatever order or orientation they were given in. A base may
    have several partners (see :meth:`multi_partner_bases`); the file writers refuse that.

    >>> bp = BasePairs(6, [(5, 0), (1, 4), (0, 5)])
    >>> bp
    BasePairs(length=6, pairs=[(0, 5), (1, 4)])
    >>> bp.partners().tolist()
    [5, 4, -1, -1, 1, 0]
    """

    __slots__ = ("length", "pairs")

    def __init__(
        self, length: int, pairs: Iterable[Sequence[int]] | np.ndarray = (), *, source: str = ""
    ):
        where = _where(source)
        length = int(length)
        if length < 0:
            raise StructureError(f"{where}negative sequence length {length}")
        array = np.asarray(pairs if isinstance(pairs, np.ndarray) else list(pairs))
        if array.size == 0:
            array = np.zeros((0, 2), dtype=np.int64)
        if array.ndim != 2 or array.shape[1] != 2 or array.dtype.kind not in "iu":
            raise StructureError(
                f"{where}pairs must be integer (i, j) tuples, "
                f"got {array.dtype} values of shape {array.shape}"
            )
        array = np.sort(array.astype(np.int64), axis=1)
        self_paired = array[array[:, 0] == array[:, 1]]
        if len(self_paired):
            raise StructureError(f"{where}base {self_paired[0, 0] + 1} is paired with itself")
        outside = array[(array[:, 0] < 0) | (array[:, 1] >= length)]
        if len(outside):
            i, j = outside[0]
            raise StructureError(
                f"{where}pair ({i + 1}, {j + 1}) lies outside a sequence of length {length}"
            )
        array = np.unique(array, axis=0) if len(array) else array
        array.flags.writeable = False
        object.__setattr__(self, "length", length)
        object.__setattr__(self, "pairs", array)

    def __setattr__(self, name, value):
        raise AttributeError("BasePairs is immutable")

    def __reduce__(self):  # pickling (e.g. for DataLoader workers) goes through __init__
        return BasePairs, (self.length, np.array(self.pairs))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BasePairs):
            return NotImplemented
        return self.length == other.length and np.array_equal(self.pairs, other.pairs)

    def __hash__(self) -> int:
        return hash((self.length, self.pairs.tobytes()))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.to_list())

    def __repr__(self) -> str:
        return f"BasePairs(length={self.length}, pairs={self.to_list()})"

    def to_list(self) -> list[tuple[int, int]]:
        """The pairs as a list of 0-based ``(i, j)`` tuples of ints, ``i < j``."""
        return [(int(i), int(j)) for i, j in self.pairs]

    # --- matrices ---------------------------------------------------------------------------

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> "BasePairs":
        """Pairs from the nonzero cells of an ``(L, L)`` matrix, either triangle; diagonal ignored.

        >>> m = np.zeros((4, 4), dtype=bool); m[0, 3] = m[2, 1] = True
        >>> BasePairs.from_matrix(m).to_list()
        [(0, 3), (1, 2)]
        """
        matrix = np.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise StructureError(f"a pair matrix must be square (L, L), got shape {matrix.shape}")
        nonzero = matrix != 0
        upper = np.triu(nonzero | nonzero.T, k=1)
        return cls(matrix.shape[0], np.argwhere(upper))

    def to_matrix(self, dtype: np.dtype | type = np.float64) -> np.ndarray:
        """The symmetric ``(L, L)`` 0/1 matrix, as the original builds its targets.

        >>> BasePairs(3, [(0, 2)]).to_matrix(dtype=int).tolist()
        [[0, 0, 1], [0, 0, 0], [1, 0, 0]]
        """
        matrix = np.zeros((self.length, self.length), dtype=dtype)
        i, j = self.pairs[:, 0], self.pairs[:, 1]
        matrix[i, j] = 1
        matrix[j, i] = 1
        return matrix

    # --- partners ---------------------------------------------------------------------------

    def multi_partner_bases(self) -> np.ndarray:
        """0-based indices of bases with more than one partner (empty for a plain structure).

        >>> BasePairs(5, [(0, 3), (0, 4), (1, 2)]).multi_partner_bases().tolist()
        [0]
        """
        counts = np.bincount(self.pairs.ravel(), minlength=self.length)
        return np.flatnonzero(counts > 1)

    def partners(self, source: str = "") -> np.ndarray:
        """Partner of each base (0-based), -1 when unpaired; raises if a base has several."""
        multi = self.multi_partner_bases()
        if len(multi):
            base = int(multi[0])
            others = sorted(int(j if i == base else i) for i, j in self.pairs if base in (i, j))
            raise StructureError(
                f"{_where(source)}base {base + 1} pairs with several bases "
                f"({', '.join(str(k + 1) for k in others)}); dot-bracket, bpseq and ct need one "
                "partner per base: pick one per base first (protrna.structure.resolve_conflicts)"
            )
        partner = np.full(self.length, -1, dtype=np.int64)
        partner[self.pairs[:, 0]] = self.pairs[:, 1]
        partner[self.pairs[:, 1]] = self.pairs[:, 0]
        return partner

    # --- dot-bracket -------------------------------------------------------------------------

    @classmethod
    def from_dot_bracket(cls, text: str, *, source: str = "") -> "BasePairs":
        """Parse dot-bracket with pseudoknot brackets ``()[]{}<>`` and letter pairs ``Aa``, ``Bb``.

        ``.`` is unpaired; an upper-case letter opens and its lower-case letter closes.

        >>> BasePairs.from_dot_bracket("A[..a]").to_list()
        [(0, 4), (1, 5)]
        >>> BasePairs.from_dot_bracket("(..))", source="x.dbn")
        Traceback (most recent call last):
        ...
        protrna.structure.StructureError: x.dbn: unbalanced ')' at position 5 (no opening '(' left)
        """
        stacks: list[list[int]] = [[] for _ in _PAGES]
        pairs = []
        for position, char in enumerate(text):
            if char == ".":
                continue
            if char in _OPENING:
                stacks[_OPENING[char]].append(position)
            elif char in _CLOSING:
                page = _CLOSING[char]
                if not stacks[page]:
                    raise StructureError(
                        f"{_where(source)}unbalanced {char!r} at position {position + 1} "
                        f"(no opening {_PAGES[page][0]!r} left)"
                    )
                pairs.append((stacks[page].pop(), position))
            else:
                raise StructureError(
                    f"{_where(source)}unexpected character {char!r} at position {position + 1} "
                    "of a dot-bracket structure (allowed: '.', ()[]{}<> and letter pairs Aa, Bb...)"
                )
        for page, stack in enumerate(stacks):
            if stack:
                raise StructureError(
                    f"{_where(source)}unbalanced {_PAGES[page][0]!r} at position {stack[-1] + 1} "
                    f"(never closed)"
                )
        return cls(len(text), pairs)

    def to_dot_bracket(self, source: str = "") -> str:
        """Dot-bracket text; nested pairs use ``()``, crossing pairs the next free bracket types.

        Pages are filled greedily: ``()`` takes a largest set of mutually non-crossing pairs
        (all pairs when the structure has no pseudoknot; between equal rivals the 3' one), then
        each remaining pair, 5' first, takes the first of ``[] {} <> Aa Bb ...`` that it does not
        cross. Exact minimisation of the number of bracket types is NP-hard; this heuristic
        reproduces bpRNA's brackets on all of TS0 and on 994 of TR0's 999 pseudoknotted records.
        Raises :class:`StructureError` if a base has several partners.

        >>> BasePairs(12, [(0, 7), (1, 6), (2, 5), (3, 11), (4, 10)]).to_dot_bracket()
        '((([[)))..]]'
        >>> BasePairs(6, [(0, 3), (1, 4), (2, 5)]).to_dot_bracket()  # three mutually crossing pairs
        '[{(]})'
        """
        self.partners(source)  # one partner per base, or a clear error
        text = ["."] * self.length
        for (i, j), page in zip(self.pairs, _assign_pages(self.pairs)):
            if page >= len(_PAGES):
                raise StructureError(
                    f"{_where(source)}the structure needs more than {len(_PAGES)} bracket types"
                )
            text[i], text[j] = _PAGES[page]
        return "".join(text)


def _crossing(pairs: np.ndarray) -> np.ndarray:
    """``(n, n)`` bool: pair a crosses pair b (``i_a < i_b < j_a < j_b`` or the reverse)."""
    i, j = pairs[:, 0], pairs[:, 1]
    a_then_b = (i[:, None] < i[None, :]) & (i[None, :] < j[:, None]) & (j[:, None] < j[None, :])
    return a_then_b | a_then_b.T


def _max_nested_subset(pairs: np.ndarray) -> np.ndarray:
    """Bool mask of a largest subset of (one-partner) ``pairs`` in which no two pairs cross.

    Interval dynamic programming over the pairs' ends only: ``best[a, b]`` is the most pairs
    nested inside ends ``a..b-1``. On ties the pair opening further 3' is kept, as bpRNA does
    (its 5' rival then gets ``[]``).
    """
    ends = np.unique(pairs.ravel())
    m = len(ends)
    index = {int(pos): k for k, pos in enumerate(ends)}
    closing = np.full(m, -1)
    for i, j in pairs:
        closing[index[int(i)]] = index[int(j)]
    best = np.zeros((m + 2, m + 1), dtype=np.int32)
    for a in range(m - 1, -1, -1):
        row = best[a + 1].copy()
        c = closing[a]
        if c >= 0:  # take pair (a, c): inside a+1..c-1, then anything after c
            taken = 1 + best[a + 1, c] + best[c + 1, c + 1 :]
            row[c + 1 :] = np.maximum(row[c + 1 :], taken)
        best[a] = row
    chosen = set()
    todo = [(0, m)]
    while todo:
        a, b = todo.pop()
        if a >= b:
            continue
        c = closing[a]
        if 0 <= c < b and best[a, b] > best[a + 1, b]:
            chosen.add(a)
            todo += [(a + 1, c), (c + 1, b)]
        else:
            todo.append((a + 1, b))
    return np.array([index[int(i)] in chosen for i in pairs[:, 0]], dtype=bool)


def _assign_pages(pairs: np.ndarray) -> np.ndarray:
    """Bracket page of each (sorted, one-partner) pair; see :meth:`BasePairs.to_dot_bracket`."""
    page = np.zeros(len(pairs), dtype=np.int64)
    if len(pairs) < 2:
        return page
    crosses = _crossing(pairs)
    knotted = np.flatnonzero(crosses.any(axis=1))
    if len(knotted) == 0:
        return page
    # Pairs that cross nothing belong to every maximum nested set: solve for the others only.
    in_first = _max_nested_subset(pairs[knotted])
    page[knotted[~in_first]] = -1
    for k in np.flatnonzero(page < 0):  # sorted by i: 5' first
        used = {int(p) for p in page[crosses[k]] if p > 0}
        page[k] = next(p for p in range(1, len(pairs) + 2) if p not in used)
    return page


# --- records and files -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StructureRecord:
    """One RNA with its structure: ``id``, ``sequence``, ``pairs`` and ``source`` (for messages)."""

    id: str
    sequence: str
    pairs: BasePairs
    source: str = ""

    def __post_init__(self) -> None:
        if self.pairs.length != len(self.sequence):
            raise StructureError(
                f"{_where(self.source)}record {self.id!r}: structure length {self.pairs.length} != "
                f"sequence length {len(self.sequence)}"
            )

    def __len__(self) -> int:
        return len(self.sequence)

    @property
    def label(self) -> str:
        """Where the record comes from, for messages: file, record id and line when known."""
        if self.id in self.source:
            return self.source
        return f"{self.source}, record {self.id!r}" if self.source else f"record {self.id!r}"

    @property
    def dot_bracket(self) -> str:
        """The structure as dot-bracket; raises if a base has several partners."""
        return self.pairs.to_dot_bracket(self.label)


def read_dbn(path: str | Path) -> Iterator[StructureRecord]:
    """Yield the records of a 3-line dot-bracket file (``>id``, sequence, structure), streaming.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "x.dbn")
    >>> _ = open(path, "w").write(">r1\\nGGGAAACCC\\n(((...)))\\n")
    >>> [(r.id, r.pairs.to_list()) for r in read_dbn(path)]
    [('r1', [(0, 8), (1, 7), (2, 6)])]
    """
    for fasta in read_fasta(path):
        source = f"{path}, record {fasta.id!r} (line {fasta.line})"
        if fasta.structure is None:
            hint = ""
            if "." in fasta.sequence:  # see read_fasta: such a line is read as more sequence
                hint = " (a line of dots only counts as the structure when it is as long as the sequence)"
            raise StructureError(f"{source}: no dot-bracket line after the sequence{hint}")
        if len(fasta.structure) != len(fasta.sequence):
            raise StructureError(
                f"{source}: structure length {len(fasta.structure)} != sequence length "
                f"{len(fasta.sequence)}"
            )
        pairs = BasePairs.from_dot_bracket(fasta.structure, source=source)
        yield StructureRecord(fasta.id, fasta.sequence, pairs, source)


def write_dbn(records: Iterable[StructureRecord], path: str | Path) -> None:
    """Write records as 3-line dot-bracket (``>id``, sequence, structure)."""
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(f">{record.id}\n{record.sequence}\n{record.dot_bracket}\n")


def write_bpseq(record: StructureRecord, path: str | Path) -> None:
    """Write one record as bpseq: ``index base partner`` per base, 1-based, 0 when unpaired."""
    partner = record.pairs.partners(f"{path}: writing {record.label}")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"# {record.id}\n")
        for k, (base, other) in enumerate(zip(record.sequence, partner), start=1):
            handle.write(f"{k} {base} {other + 1}\n")


def write_ct(record: StructureRecord, path: str | Path) -> None:
    """Write one record as ct: header ``length name``, then ``index base prev next partner index``.
    """
    partner = record.pairs.partners(f"{path}: writing {record.label}")
    length = len(record.sequence)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"{length}\t{record.id}\n")
        for k, (base, other) in enumerate(zip(record.sequence, partner), start=1):
            following = k + 1 if k < length else 0
            handle.write(f"{k:>5} {base} {k - 1:>5} {following:>5} {other + 1:>5} {k:>5}\n")


def _pairs_from_partner_columns(
    entries: list[tuple[int, str, int, int]], path: Path
) -> tuple[str, BasePairs]:
    """Sequence and pairs from ``(index, base, partner, line)`` rows of a bpseq or ct file."""
    length = len(entries)
    sequence = []
    partner = {}
    # Indices first: a missing or repeated base line is the error to report, not the partner
    # that points past the shortened end.
    for expected, (index, _base, _other, line) in enumerate(entries, start=1):
        if index != expected:
            raise StructureError(f"{path}, line {line}: base index {index}, expected {expected}")
    for index, base, other, line in entries:
        if not 0 <= other <= length or other == index:
            raise StructureError(
                f"{path}, line {line}: base {index} has partner {other}, not in 1..{length} "
                "(or 0 for unpaired)"
            )
        sequence.append(base)
        partner[index] = other
    pairs = []
    for index, other in partner.items():
        if other and partner[other] != index:
            raise StructureError(
                f"{path}: base {index} pairs with {other}, but base {other} pairs with "
                f"{partner[other] or 'nothing'}"
            )
        if index < other:
            pairs.append((index - 1, other - 1))
    return "".join(sequence), BasePairs(length, pairs, source=str(path))


def _int(field: str, path: Path, line: int, what: str) -> int:
    try:
        return int(field)
    except ValueError:
        raise StructureError(f"{path}, line {line}: {what} {field!r} is not an integer") from None


def read_bpseq(path: str | Path) -> StructureRecord:
    """Read a bpseq file; the record id is the file name without its extension.

    Header lines before the first base (``#`` comments, CRW's ``Filename:`` lines) are skipped.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "hairpin.bpseq")
    >>> _ = open(path, "w").write("# a hairpin\\n1 G 5\\n2 A 0\\n3 A 0\\n4 A 0\\n5 C 1\\n")
    >>> record = read_bpseq(path)
    >>> record.id, record.sequence, record.dot_bracket
    ('hairpin', 'GAAAC', '(...)')
    """
    path = Path(path)
    entries = []
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            fields = raw.split()
            if not fields or fields[0].startswith("#"):
                continue
            if not entries and not fields[0].isdigit():
                continue  # header text
            if len(fields) != 3:
                raise StructureError(
                    f"{path}, line {number}: expected 'index base partner', got {raw.strip()!r}"
                )
            index = _int(fields[0], path, number, "base index")
            other = _int(fields[2], path, number, "partner")
            entries.append((index, fields[1], other, number))
    if not entries:
        raise StructureError(f"{path}: no base lines; is this a bpseq file?")
    sequence, pairs = _pairs_from_partner_columns(entries, path)
    return StructureRecord(path.stem, sequence, pairs, str(path))


def ct_header_id(fields: list[str]) -> str | None:
    """The record id a ct header names, or ``None``: the first word after the length and, in the
    headers of ViennaRNA's b2ct, RNAstructure and mfold, after the energy (``ENERGY = -3.4``,
    ``dG = -3.4``). As in FASTA headers, the first word is the id and the rest a description.

    >>> ct_header_id("7 hp".split()), ct_header_id("58 ENERGY = -21.3 tRNA-Phe yeast".split())
    ('hp', 'tRNA-Phe')
    >>> ct_header_id(["12"]) is None, ct_header_id("9 dG = -1.20".split()) is None
    (True, True)
    """
    rest = fields[1:]
    if rest and rest[0].split("=", 1)[0].lower() in ("energy", "dg") and "=" in " ".join(rest):
        # "ENERGY = -3.4", "ENERGY= -3.4", "ENERGY =-3.4", "dG = -3.4": skip the name, "=" and value.
        words = " ".join(rest).split("=", 1)[1].split()
        rest = words[1:]
    return rest[0] if rest else None


def read_ct(path: str | Path) -> StructureRecord:
    """Read the (first) structure of a ct file. The record id is the one its header line names
    (:func:`ct_header_id`), else the file name without extension.

    The header's first field is the length; each base line is
    ``index base prev next partner natural_index``. Files with several structures (RNAstructure
    writes suboptimal ones after the first) give the first one, with a warning.
    """
    path = Path(path)
    with open(path, encoding="utf-8") as handle:
        lines = [(number, raw.split()) for number, raw in enumerate(handle, start=1)]
    lines = [(number, fields) for number, fields in lines if fields]
    if not lines:
        raise StructureError(f"{path}: empty file; is this a ct file?")
    header_line, header = lines[0]
    length = _int(header[0], path, header_line, "length in the header")
    body = lines[1 : 1 + length]
    if len(body) < length:
        raise StructureError(
            f"{path}: header says {length} bases, the file has {len(body)} base lines"
        )
    entries = []
    for number, fields in body:
        if len(fields) < 6:
            raise StructureError(
                f"{path}, line {number}: expected 6 columns "
                f"(index base prev next partner natural_index), got {len(fields)}"
            )
        index = _int(fields[0], path, number, "base index")
        other = _int(fields[4], path, number, "partner")
        entries.append((index, fields[1], other, number))
    if len(lines) > 1 + length:
        warnings.warn(f"{path}: holds more than one structure; using the first", stacklevel=2)
    sequence, pairs = _pairs_from_partner_columns(entries, path)
    # The header keeps an id that a file name cannot (fold names files after cleaned-up ids).
    return StructureRecord(ct_header_id(header) or path.stem, sequence, pairs, str(path))


def read_structure_dir(folder: str | Path) -> list[StructureRecord]:
    """Read every ``.bpseq`` and ``.ct`` file of a folder (sorted by name; ids are file stems, or
    the id a ct header names)."""
    folder = Path(folder)
    readers = {".bpseq": read_bpseq, ".ct": read_ct}
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in readers)
    if not files:
        raise StructureError(f"{folder}: no .bpseq or .ct files")
    stems = [p.stem for p in files]
    twice = sorted({stem for stem in stems if stems.count(stem) > 1})
    if twice:  # e.g. the output folder of `protrna fold --format bpseq ct`
        raise StructureError(
            f"{folder}: {len(twice)} RNAs have both a .bpseq and a .ct file (e.g. {twice[0]!r}); "
            "give a folder with one file per RNA, or the run's predictions.dbn"
        )
    return [readers[p.suffix.lower()](p) for p in files]


def read_pdb_tsv(path: str | Path) -> Iterator[StructureRecord]:
    """Read a PDB test set table (``id length sequence dbn n_pairs pairs_1based``).

    ``pairs_1based`` (``i,j;i,j;...``) is the reference, since bases there can have several
    partners (``dbn`` then reads ``NA(multi-partner)``); such records score fine but cannot be
    written as dot-bracket, bpseq or ct.
    """
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = {"id", "sequence", "pairs_1based"} - set(reader.fieldnames or ())
        if missing:
            raise StructureError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for row in reader:
            source = f"{path}, record {row['id']!r} (line {reader.line_num})"
            sequence = row["sequence"]
            if row.get("length") and int(row["length"]) != len(sequence):
                raise StructureError(
                    f"{source}: length column {row['length']} != sequence length {len(sequence)}"
                )
            pairs = []
            for item in filter(None, row["pairs_1based"].strip().split(";")):
                try:
                    i, j = (int(x) for x in item.split(","))
                except ValueError:
                    raise StructureError(
                        f"{source}: malformed pair {item!r} in pairs_1based"
                    ) from None
                pairs.append((i - 1, j - 1))
            base_pairs = BasePairs(len(sequence), pairs, source=source)
            if row.get("n_pairs") and int(row["n_pairs"]) != len(base_pairs.pairs):
                raise StructureError(
                    f"{source}: n_pairs says {row['n_pairs']}, pairs_1based holds "
                    f"{len(base_pairs.pairs)} distinct pairs"
                )
            yield StructureRecord(row["id"], sequence, base_pairs, source)


def read_reference(path: str | Path) -> list[StructureRecord]:
    """Read a reference set: 3-line ``.dbn``, PDB ``.tsv``, a folder of bpseq/ct, or one such file.

    Raises :class:`StructureError` if two records share an id.
    """
    path = Path(path)
    if path.is_dir():
        records = read_structure_dir(path)
    elif path.suffix.lower() == ".tsv":
        records = list(read_pdb_tsv(path))
    elif path.suffix.lower() == ".bpseq":
        records = [read_bpseq(path)]
    elif path.suffix.lower() == ".ct":
        records = [read_ct(path)]
    else:
        records = list(read_dbn(path))
    seen: dict[str, str] = {}
    for record in records:
        if record.id in seen:
            raise StructureError(f"{record.source}: id {record.id!r} repeats {seen[record.id]}")
        seen[record.id] = record.source
    return records


# --- decoding predicted pair maps ------------------------------------------------------------


def check_nucleotides(records: Iterable[StructureRecord]) -> None:
    """Refuse, as ``protrna fold`` does, a record whose sequence holds a letter that is no
    nucleotide code: the :class:`StructureError` names the record and the letter's position.
    Scoring such a reference would compare structures of a sequence no folder could read.

    >>> check_nucleotides([StructureRecord("ok", "GGNAC", BasePairs(5))])
    >>> check_nucleotides([StructureRecord("odd", "GGZAC", BasePairs(5), "refs.dbn, record 'odd' (line 4)")])
    Traceback (most recent call last):
    ...
    protrna.structure.StructureError: refs.dbn, record 'odd' (line 4): 'Z' at position 3 is not a nucleotide code (allowed: A C G U T, IUPAC codes R Y S W K M B D H V N, X, gaps - and .)
    """
    for record in records:
        try:
            encode_rna(record.sequence)
        except ValueError as error:
            problem = str(error).removeprefix("sequence has ").replace(", which is not", " is not")
            raise StructureError(f"{record.label}: {problem}") from None


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Logistic function, without overflow for large ``|logits|``.

    (The original computes ``exp(x) / (1 + exp(x))``, which gives NaN, so "no pair", above
    x ~ 88 in float32; trained heads never come near that.)

    >>> sigmoid(np.array([0.0, 1000.0, -1000.0])).tolist()
    [0.5, 1.0, 0.0]
    """
    logits = np.asarray(logits, dtype=np.float64)
    decay = np.exp(-np.abs(logits))  # in (0, 1]: never overflows
    return np.where(logits >= 0, 1 / (1 + decay), decay / (1 + decay))


def check_threshold(threshold: float | None) -> None:
    """A pair-probability cut-off must lie in [0, 1] (``None``: the head's own); NaN is refused."""
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold is a pair probability, between 0 and 1, not {threshold}")


def decode_matrix(probabilities: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """The original decoding: ``probabilities > threshold`` as an ``(L, L)`` bool matrix.

    No canonical-pair mask, no minimum loop, and a base may get several partners: this is
    what the original scores. Use :func:`resolve_conflicts` for a structure to write to a file.

    >>> decode_matrix(np.array([[0.1, 0.3], [0.3, 0.1]])).tolist()
    [[False, True], [True, False]]
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[0] != probabilities.shape[1]:
        raise ValueError(
            f"pair probabilities must be square (L, L), got shape {probabilities.shape}"
        )
    return probabilities > threshold


def is_canonical(a: str, b: str) -> bool:
    """Watson-Crick or wobble pair (AU, GC, GU), case-insensitive, T read as U.

    >>> is_canonical("g", "T"), is_canonical("A", "G")
    (True, False)
    """
    return (a + b).upper().replace("T", "U") in _CANONICAL_PAIRS


#: How :func:`resolve_conflicts` picks one partner per base.
CONFLICT_METHODS = ("greedy", "matching")


def _maximum_weight_pairs(i: np.ndarray, j: np.ndarray, weights: np.ndarray) -> list[tuple[int, int]]:
    """Exact maximum-weight matching of the candidate pairs; networkx's blossom algorithm, since
    pairing graphs are not bipartite (SciPy only matches bipartite graphs)."""
    import networkx as nx

    graph = nx.Graph()
    graph.add_weighted_edges_from(zip(i.tolist(), j.tolist(), weights.tolist()))
    return sorted((min(a, b), max(a, b)) for a, b in nx.max_weight_matching(graph))


def resolve_conflicts(
    probabilities: np.ndarray | SparsePairProbabilities,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    sequence: str | None = None,
    canonical_only: bool = False,
    min_hairpin: int = 0,
    method: str = "greedy",
) -> BasePairs:
    """One partner per base: a structure that files can hold.

    Candidates are the cells ``(i, j)``, ``i < j``, of the upper triangle with probability above
    ``threshold`` (or the listed pairs of a :class:`~protrna.sparse_pairs.SparsePairProbabilities`
    above it, which give the same structure as its dense matrix; the threshold may not lie below
    the list's floor). ``method``:

    * ``"greedy"`` (default): taken from the most probable down, skipping any whose bases are
      already paired (ties: 5' pair first). Fast; keeps at least half the weight of the best
      choice, and usually all of it.
    * ``"matching"``: the set of pairs with the largest sum of probabilities (the expected
      number of correct pairs), an exact maximum-weight matching of the candidate graph
      (Edmonds' blossom algorithm, ``networkx.max_weight_matching``). Slower on dense maps.

    Defaults change nothing but the one-partner rule, so the result is a subset of what the
    original protocol scores:

    * ``canonical_only=False``: with ``True`` only AU, GC and GU pairs (case-insensitive, T = U)
      are kept; needs ``sequence``.
    * ``min_hairpin=0``: pairs need ``j - i > min_hairpin``; 3 is the usual physical minimum loop.
      (``j - i > 0`` always holds, so 0 removes nothing.)

    >>> p = np.zeros((6, 6))
    >>> p[0, 5] = p[5, 0] = 0.9; p[0, 4] = p[4, 0] = 0.8; p[1, 4] = p[4, 1] = 0.6
    >>> resolve_conflicts(p).to_list()
    [(0, 5), (1, 4)]
    >>> resolve_conflicts(p, sequence="GAAAUA", canonical_only=True).to_list()
    [(0, 4)]
    >>> p[1, 5] = p[5, 1] = 0.85  # now (0, 4) + (1, 5) outweigh (0, 5) + nothing
    >>> resolve_conflicts(p).to_list(), resolve_conflicts(p, method="matching").to_list()
    ([(0, 5), (1, 4)], [(0, 4), (1, 5)])
    """
    if isinstance(probabilities, SparsePairProbabilities):
        length = probabilities.length
    else:
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.ndim != 2 or probabilities.shape[0] != probabilities.shape[1]:
            raise ValueError(
                f"pair probabilities must be square (L, L), got shape {probabilities.shape}"
            )
        length = probabilities.shape[0]
    if sequence is not None and len(sequence) != length:
        raise ValueError(
            f"sequence has {len(sequence)} nt but the probability map is {length} x {length}"
        )
    if canonical_only and sequence is None:
        raise ValueError("canonical_only=True needs the sequence")
    if min_hairpin < 0:
        raise ValueError(f"min_hairpin must be >= 0, got {min_hairpin}")
    if method not in CONFLICT_METHODS:
        raise ValueError(f"method must be one of {CONFLICT_METHODS}, got {method!r}")
    if isinstance(probabilities, SparsePairProbabilities):
        i, j, weights = probabilities.candidates(threshold, min_hairpin)  # in triu order too
    else:
        i, j = np.triu_indices(length, k=min_hairpin + 1)
        keep = probabilities[i, j] > threshold
        i, j = i[keep], j[keep]
        weights = probabilities[i, j]
    if canonical_only:
        canonical = np.array(
            [is_canonical(sequence[a], sequence[b]) for a, b in zip(i, j)], dtype=bool
        )
        i, j, weights = i[canonical], j[canonical], weights[canonical]
    if method == "matching":
        return BasePairs(length, _maximum_weight_pairs(i, j, weights))
    order = np.argsort(-weights, kind="stable")  # triu order breaks ties 5' first
    paired = np.zeros(length, dtype=bool)
    chosen = []
    for a, b in zip(i[order], j[order]):
        if not paired[a] and not paired[b]:
            paired[a] = paired[b] = True
            chosen.append((a, b))
    return BasePairs(length, chosen)
