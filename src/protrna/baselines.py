"""Classical structure predictors to compare ProtRNA with, each an optional extra from PyPI.

- ``rnafold``: ViennaRNA's MFE structure (``RNA.fold``); pair probabilities from its partition
  function (exact).
- ``linearfold-v``: LinearFold-V's MFE structure (ViennaRNA energies, beam 100); no probabilities.
- ``eternafold``: LinearPartition-E's MEA structure (EternaFold parameters, beam 100); pair
  probabilities from the same beam-pruned partition function.

Install: ``pip install "protrna[rnafold]"`` (viennarna), ``"protrna[linearfold]"`` (pylinearfold),
``"protrna[eternafold]"`` (linearpartition-unofficial), or ``"protrna[baselines]"`` for all
three. Each is imported only when asked for, so the rest of the package works without them, and a
missing one is one :class:`ImportError` line with the install command
(:func:`require_baseline`). LinearFold and LinearPartition are free for research and education
but not for resale (their licence is in the packages).

``eternafold`` is LinearPartition with the EternaFold parameters: its beam search approximates
EternaFold's partition function, and its structure is the maximum-expected-accuracy (MEA) one
LinearPartition gives. No PyPI package runs CONTRAfold, IPknot or EternaFold's own binary here.

>>> from protrna.baselines import rnafold
>>> rnafold("GGGGAAACCCC").to_dot_bracket()  # doctest: +SKIP
'((((...))))'
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from importlib.metadata import PackageNotFoundError, version
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np

from .structure import BasePairs, StructureRecord


class _SequenceRecord(Protocol):
    id: str
    sequence: str


@dataclasses.dataclass(frozen=True)
class Folded:
    """One baseline's answer for one RNA: ``pairs`` and, where it gives them, ``probabilities``
    (a symmetric ``(L, L)`` float32 pair-probability matrix with a zero diagonal)."""

    pairs: BasePairs
    probabilities: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Baseline:
    """A classical predictor: how to install it, what it computes, and the function doing it."""

    key: str  # the name on the command line
    name: str  # the name in tables
    distribution: str  # the PyPI package
    module: str  # what it is imported as
    extra: str  # protrna's optional extra that installs it
    method: str  # what the structure and the probabilities are, for reports
    gives_probabilities: bool
    fold: Callable[[str], Folded]
    #: The structure alone where that is cheaper than :attr:`fold` (RNAfold without its partition function).
    structure: Callable[[str], BasePairs] | None = None

    @property
    def version(self) -> str:
        """The installed package's version (``ImportError`` if it is not installed)."""
        require_baseline(self.key)
        try:
            return version(self.distribution)
        except PackageNotFoundError:  # importable but not installed as a package (a source tree)
            return getattr(importlib.import_module(self.module), "__version__", "unknown")


def _import(module: str, name: str, distribution: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{name} predictions need the {distribution} package, which is not installed: "
            f'pip install "protrna[{extra}]" (or pip install {distribution})'
        ) from error


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


def rnafold_probabilities(sequence: str) -> tuple[BasePairs, np.ndarray]:
    """ViennaRNA's MFE structure and its partition-function pair probabilities (``RNAfold -p``).

    Same model as :func:`rnafold` (the MFE structure is the same). The Boltzmann factors are
    rescaled by the MFE first, as RNAfold does, so that long RNAs do not overflow. Returns the
    pairs and a symmetric ``(L, L)`` float32 matrix; each base's row sums to at most 1 (the rest
    is its probability of staying unpaired).

    >>> pairs, probabilities = rnafold_probabilities("GGGGAAACCCC")  # doctest: +SKIP
    >>> probabilities.shape, probabilities.sum(axis=1).max() <= 1 + 1e-6  # doctest: +SKIP
    ((11, 11), True)
    """
    RNA = require_vienna()
    compound = RNA.fold_compound(sequence.upper())
    structure, energy = compound.mfe()
    compound.exp_params_rescale(energy)
    compound.pf()
    # bpp() is 1-based and upper-triangular: row and column 0 are padding.
    upper = np.array(compound.bpp(), dtype=np.float64)[1:, 1:]
    probabilities = np.triu(upper, k=1)
    pairs = BasePairs.from_dot_bracket(structure, source=f"RNAfold output ({len(sequence)} nt)")
    return pairs, (probabilities + probabilities.T).astype(np.float32)


def _fold_rnafold(sequence: str) -> Folded:
    pairs, probabilities = rnafold_probabilities(sequence)
    return Folded(pairs, probabilities)


def _plain(sequence: str) -> str:
    """Upper-case ACGU, every other code as N: LinearFold and LinearPartition read no lower case
    (they leave it unpaired) and no IUPAC codes."""
    return re.sub(r"[^ACGU]", "N", sequence.upper().replace("T", "U"))


def _from_triples(length: int, triples: np.ndarray) -> np.ndarray:
    """Symmetric float32 matrix from LinearPartition's 0-based ``(i, j, prob)`` records."""
    matrix = np.zeros((length, length), dtype=np.float32)
    if len(triples):
        i, j = triples["i"].astype(np.int64), triples["j"].astype(np.int64)
        matrix[i, j] = triples["prob"]
        matrix[j, i] = triples["prob"]
    return matrix


def _fold_linearfold(sequence: str) -> Folded:
    module = _import("pylinearfold", "LinearFold-V", "pylinearfold", "linearfold")
    structure = module.fold(_plain(sequence))["structure"]
    return Folded(BasePairs.from_dot_bracket(structure, source=f"LinearFold output ({len(sequence)} nt)"))


def _fold_eternafold(sequence: str) -> Folded:
    module = _import("linearpartition", "EternaFold", "linearpartition-unofficial", "eternafold")
    result = module.partition(_plain(sequence), mode="eterna", beamsize=100, dangles=2)
    pairs = BasePairs.from_dot_bracket(result["structure"], source=f"LinearPartition output ({len(sequence)} nt)")
    return Folded(pairs, _from_triples(len(sequence), result["bpp"]))


#: The baselines by command-line name, in the order reports list them.
BASELINES: dict[str, Baseline] = {
    baseline.key: baseline
    for baseline in (
        Baseline("rnafold", "RNAfold", "viennarna", "RNA", "rnafold",
                 "ViennaRNA RNAfold, default parameters (Turner 2004, 37 C, dangles 2): MFE structure; "
                 "pair probabilities from the partition function", True, _fold_rnafold, rnafold),
        Baseline("linearfold-v", "LinearFold-V", "pylinearfold", "pylinearfold", "linearfold",
                 "LinearFold with ViennaRNA parameters, beam 100: MFE structure; no probabilities", False,
                 _fold_linearfold),
        Baseline("eternafold", "EternaFold", "linearpartition-unofficial", "linearpartition",
                 "eternafold", "EternaFold parameters in LinearPartition (LinearPartition-E), beam 100, dangles 2: MEA structure; "
                 "pair probabilities from its beam-pruned partition function", True, _fold_eternafold),
    )
}


def require_baseline(key: str):
    """Import what baseline ``key`` needs; one ``ImportError`` line with the install command if it
    is missing, ``ValueError`` for a name that is no baseline."""
    if key not in BASELINES:
        raise ValueError(f"unknown baseline {key!r}; choose from {', '.join(BASELINES)}")
    baseline = BASELINES[key]
    if key == "rnafold":
        return require_vienna()
    return _import(baseline.module, baseline.name, baseline.distribution, baseline.extra)


def rnafold_records(records: Iterable[_SequenceRecord]) -> Iterator[StructureRecord]:
    """RNAfold structures for records with ``id`` and ``sequence`` (FASTA or structure records).

    The sequence is kept as given, so the result can be written with
    :func:`protrna.structure.write_dbn` and scored against the reference it came from.
    """
    require_vienna()  # fail before the first record if ViennaRNA is missing
    for record in records:
        pairs = rnafold(record.sequence)
        yield StructureRecord(record.id, record.sequence, pairs, source="RNAfold")


def baseline_records(key: str, records: Iterable[_SequenceRecord]) -> Iterator[StructureRecord]:
    """The structures of baseline ``key`` for each record (sequence kept as given), like
    :func:`rnafold_records` for any entry of :data:`BASELINES`."""
    require_baseline(key)
    baseline = BASELINES[key]
    for record in records:
        if baseline.structure is not None:
            pairs = baseline.structure(record.sequence)
        else:
            pairs = baseline.fold(record.sequence).pairs
        yield StructureRecord(record.id, record.sequence, pairs, source=baseline.name)
