"""RnaBench's benchmark files (pickled pandas tables, ``*.plk.gz`` / ``*.plk``) to ``.dbn`` / ``.tsv``.

RnaBench stores each split as a pickled ``pandas.DataFrame``, one row per RNA: ``Id``,
``sequence`` (a list of one-letter strings, or a string), ``pairs`` (0-based ``[i, j, page]``
lists, ``page`` being the bracket level of a pseudoknot: 0 for ``()``, 1 for ``[]`` ...), and
``length``, ``gc_content``, ``has_pk``, ``has_nc``, ``has_multiplet``, ``is_pdb``, ``origin``
(RnaBench ``lib/data/build_dataset.py``). The original ProtRNA's copies (``bprna_TS0.plk``,
``intra_family_benchmark.plk`` ...) have the same layout.

Unpickling runs whatever code the file holds, so nothing here opens a pickle unless told the file
is trusted (``trust_pickle=True``, ``--trust-pickle``); then it is converted once into the plain
files the rest of the project reads:

    protrna convert-rnabench --trust-pickle bprna_TS0.plk TS0_rnabench.dbn
    protrna convert-rnabench --trust-pickle inter_family_benchmark.plk.gz inter.tsv  # multi-partner pairs

``.dbn`` needs one partner per base (pseudoknots become ``[]``, ``{}`` ... by
:meth:`~protrna.structure.BasePairs.to_dot_bracket`); ``.tsv`` is the PDB-set table
:func:`~protrna.structure.read_pdb_tsv` reads (``id length sequence dbn n_pairs pairs_1based``),
which holds any pairs. Needs pandas: ``pip install "protrna[rnabench]"``.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ..structure import BasePairs, StructureError, StructureRecord, write_dbn

logger = logging.getLogger(__name__)

#: Columns a RnaBench table must have (``Id`` is taken when present, else the row index).
REQUIRED_COLUMNS = ("sequence", "pairs")

_REFUSAL = (
    "{path} is a Python pickle (RnaBench stores its tables that way), and loading a pickle runs "
    "whatever code it contains. Convert it only if it comes from a source you trust (RnaBench's or "
    "ProtRNA's published files): pass --trust-pickle (trust_pickle=True in Python)"
)


def _pairs_of(value, record: str) -> list[tuple[int, int]]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []  # RnaBench itself reads a missing structure as no pairs
    pairs = []
    for item in value:
        fields = list(item)
        if len(fields) not in (2, 3) or not all(isinstance(x, (int, np.integer)) for x in fields[:2]):
            raise StructureError(f"{record}: pair {fields!r} is not [i, j] or [i, j, page] of integers")
        pairs.append((int(fields[0]), int(fields[1])))
    return pairs


def read_rnabench(path: str | Path, *, trust_pickle: bool = False) -> list[StructureRecord]:
    """The records of a RnaBench table, or ``PermissionError`` unless ``trust_pickle`` is set.

    Raises :class:`~protrna.structure.StructureError` naming the file and record for a missing
    column, a repeated id, a ``length`` that disagrees with the sequence, or a malformed pair.
    """
    path = Path(path)
    if not trust_pickle:
        raise PermissionError(_REFUSAL.format(path=path))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        import pandas as pd
    except ImportError as error:
        raise ImportError(f'reading {path} needs pandas: pip install "protrna[rnabench]"') from error
    table = pd.read_pickle(path)  # compression from the suffix (.gz, .bz2, ... or none)
    if not isinstance(table, pd.DataFrame):
        raise StructureError(f"{path}: holds a {type(table).__name__}, not a RnaBench table (pandas DataFrame)")
    missing = [name for name in REQUIRED_COLUMNS if name not in table.columns]
    if missing:
        raise StructureError(
            f"{path}: no column {', '.join(repr(m) for m in missing)}; a RnaBench table has "
            f"'Id', 'sequence', 'pairs' (columns here: {', '.join(map(str, table.columns))})"
        )
    ids = table["Id"] if "Id" in table.columns else table.index
    records, seen = [], {}
    for row_number, (record_id, row) in enumerate(zip(ids, table.to_dict("records"))):
        record_id = str(record_id)
        where = f"{path}, record {record_id!r} (row {row_number + 1})"
        if record_id in seen:
            raise StructureError(f"{where}: id repeats row {seen[record_id]}")
        seen[record_id] = row_number + 1
        sequence = row["sequence"]
        sequence = sequence if isinstance(sequence, str) else "".join(map(str, sequence))
        length = row.get("length")
        if length is not None and not (isinstance(length, float) and math.isnan(length)) and int(length) != len(sequence):
            raise StructureError(f"{where}: length column {length} != sequence length {len(sequence)}")
        pairs = BasePairs(len(sequence), _pairs_of(row["pairs"], where), source=where)
        records.append(StructureRecord(record_id, sequence, pairs, where))
    return records


def write_pairs_tsv(records: Iterable[StructureRecord], path: str | Path) -> None:
    """The PDB-set table (``id length sequence dbn n_pairs pairs_1based``) that
    :func:`protrna.structure.read_pdb_tsv` reads; ``dbn`` is ``NA(multi-partner)`` where a base
    has several partners."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["id", "length", "sequence", "dbn", "n_pairs", "pairs_1based"])
        for record in records:
            pairs = record.pairs
            dbn = "NA(multi-partner)" if len(pairs.multi_partner_bases()) else pairs.to_dot_bracket(record.label)
            writer.writerow([record.id, len(record), record.sequence, dbn, len(pairs.pairs),
                             ";".join(f"{i + 1},{j + 1}" for i, j in pairs.to_list())])


def convert(source: str | Path, target: str | Path, *, trust_pickle: bool = False) -> list[StructureRecord]:
    """Convert a RnaBench table to ``target`` (``.dbn`` or ``.tsv``); returns the records.

    Written through a temporary file: on any error ``target`` is left as it was.
    """
    target = Path(target)
    if target.suffix.lower() not in (".dbn", ".tsv"):
        raise ValueError(f"{target}: the output must be a .dbn or a .tsv file")
    records = read_rnabench(source, trust_pickle=trust_pickle)
    if target.suffix.lower() == ".dbn":
        multi = next((r for r in records if len(r.pairs.multi_partner_bases())), None)
        if multi is not None:
            base = int(multi.pairs.multi_partner_bases()[0]) + 1
            raise StructureError(
                f"{multi.label}: base {base} has several partners, which dot-bracket cannot hold; "
                f"write a .tsv instead ({target.with_suffix('.tsv').name})"
            )
    scratch = target.with_name(target.name + ".tmp")
    try:
        (write_dbn if target.suffix.lower() == ".dbn" else write_pairs_tsv)(records, scratch)
        os.replace(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)
    return records


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert-rnabench",
        help="convert a RnaBench benchmark file (pickled table) to .dbn or .tsv",
        description="Convert RnaBench's pickled benchmark tables (*.plk.gz, *.plk) into the .dbn / .tsv "
        "files protrna reads. Pickles run code when loaded: nothing is opened without --trust-pickle.",
    )
    parser.add_argument("input", type=Path, help="RnaBench table, e.g. inter_family_benchmark.plk.gz")
    parser.add_argument("output", type=Path, help=".dbn (one partner per base) or .tsv (any pairs)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="the input comes from a source you trust: load it (this runs code the pickle holds)")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    records = convert(args.input, args.output, trust_pickle=args.trust_pickle)
    knotted = sum(1 for r in records if "[" in _brackets(r))
    multi = sum(1 for r in records if len(r.pairs.multi_partner_bases()))
    print(f"{len(records)} records written to {args.output} ({knotted} with pseudoknots, {multi} with bases "
          f"of several partners, {sum(1 for r in records if not len(r.pairs.pairs))} without pairs)")
    return 0


def _brackets(record: StructureRecord) -> str:
    return "" if len(record.pairs.multi_partner_bases()) else record.pairs.to_dot_bracket()
