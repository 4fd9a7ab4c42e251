"""Classical structure predictors to compare ProtRNA with; for now RNAfold (ViennaRNA).

ViennaRNA is an optional dependency: ``pip install "protrna[rnafold]"``. It is imported when a
prediction is asked for, so the rest of the package works without it.

>>> from protrna.baselines import rnafold
>>> rnafold("GGGGAAACCCC").to_dot_bracket()  # doctest: +SKIP
'((((...))))'
"""

from __future__ import annotations

from typing import Iterable, Iterator, Protocol

from .structure import BasePairs, StructureRecord


class _SequenceRecord(Protocol):
    id: str
    sequence: str


def require_vienna():
    """The ViennaRNA module ``RNA``; ``ImportError`` with the install command if it is missing."""
    try:
        import RNA
    except ImportError as error:
        raise ImportError(
            "RNAfold predictions need the ViennaRNA Python bindings, which are not installed: "
            'pip install "protrna[rnafold]" (or pip install viennarna)'
        ) from error
    return RNA


def rnafold(sequence: str) -> BasePairs:
    """Minimum-free-energy structure of ``sequence`` from ViennaRNA's ``RNA.fold``.

    Default ViennaRNA settings (37 C, Turner 2004 energies, dangles 2, lonely pairs allowed).
    Lower case and T are accepted; ``N`` and other codes never pair. One partner per base and no
    pseudoknots, by construction of the algorithm.
    """
    structure, _energy = require_vienna().fold(sequence.upper())
    return BasePairs.from_dot_bracket(structure, source=f"RNAfold output ({len(sequence)} nt)")


def rnafold_records(records: Iterable[_SequenceRecord]) -> Iterator[StructureRecord]:
    """RNAfold structures for records with ``id`` and ``sequence`` (FASTA or structure records).

    The sequence is kept as given, so the result can be written with
    :func:`protrna.structure.write_dbn` and scored against the reference it came from.
    """
    require_vienna()  # fail before the first record if ViennaRNA is missing
    for record in records:
        pairs = rnafold(record.sequence)
        yield StructureRecord(record.id, record.sequence, pairs, source="RNAfold")
