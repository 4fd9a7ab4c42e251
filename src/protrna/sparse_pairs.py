"""Pair probabilities of long RNAs as a list, not an (L, L) matrix.

A 10,000-nt RNA has 50 million cells; folded in local windows (``protrna fold --max-span``) only
the pairs of bases fewer than ``max_span`` apart are predicted, and nearly all of those are near
zero. :class:`SparsePairProbabilities` keeps the pairs ``(i, j, p)``, ``i < j``, 0-based, with
``p > floor``, sorted by ``i`` then ``j``, plus what confidence estimates need from *every*
predicted pair (listed or not): each base's summed pairing probability and the expected number of
pairs. Decoding (:func:`protrna.structure.resolve_conflicts`) and confidence
(:mod:`protrna.confidence`) take it where they take a dense matrix.

File format (``.npz``, written by :meth:`SparsePairProbabilities.save`, read with ``np.load``)::

    i, j            int32 (n,)    0-based bases of each listed pair, i < j, sorted by (i, j)
    p               float32 (n,)  its probability, > floor
    length          int           nucleotides of the RNA
    floor           float         pairs with p <= floor are not listed
    max_span        int           no pair with j - i >= max_span was predicted (0: none left out)
    complete_span   int           every pair with j - i <= complete_span was predicted
    pairing         float64 (L,)  per base, the sum of p over all its predicted partners
    expected_pairs  float         sum of p over all predicted pairs (i < j)

Pairs with ``complete_span < j - i < max_span`` were predicted where one window held both bases
and not elsewhere (see :mod:`protrna.runtime.long_rnas`).

>>> P = np.zeros((5, 5), dtype=np.float32); P[0, 4] = P[4, 0] = 0.9; P[1, 3] = P[3, 1] = 0.0005
>>> sparse = SparsePairProbabilities.from_dense(P, floor=1e-3)
>>> sparse.pairs().tolist(), sparse.p.tolist(), round(sparse.expected_pairs, 4)
([[0, 4]], [0.8999999761581421], 0.9005)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

#: Marks a file as written by :meth:`SparsePairProbabilities.save` (and its version).
FORMAT = "protrna-sparse-pairs-1"

_ARRAYS = ("i", "j", "p", "pairing")
_SCALARS = ("length", "floor", "max_span", "complete_span", "expected_pairs")


def _where(source: str) -> str:
    return f"{source}: " if source else ""


@dataclasses.dataclass(eq=False)
class SparsePairProbabilities:
    """Listed pairs ``i``, ``j``, ``p`` of one RNA of ``length`` nt (see the module doc).

    ``max_span`` 0 and ``complete_span`` ``length - 1`` mean every pair was predicted.
    """

    length: int
    i: np.ndarray
    j: np.ndarray
    p: np.ndarray
    floor: float
    pairing: np.ndarray
    expected_pairs: float
    max_span: int = 0
    complete_span: int | None = None

    def __post_init__(self) -> None:
        self.length = int(self.length)
        self.i = np.ascontiguousarray(self.i, dtype=np.int32)
        self.j = np.ascontiguousarray(self.j, dtype=np.int32)
        self.p = np.ascontiguousarray(self.p, dtype=np.float32)
        self.pairing = np.ascontiguousarray(self.pairing, dtype=np.float64)
        self.floor, self.expected_pairs = float(self.floor), float(self.expected_pairs)
        self.max_span = int(self.max_span)
        if self.complete_span is None:
            self.complete_span = max(self.length - 1, 0)
        self.complete_span = int(self.complete_span)

    @classmethod
    def from_dense(cls, probabilities: np.ndarray, floor: float = 0.0) -> "SparsePairProbabilities":
        """The pairs of a symmetric ``(L, L)`` matrix above ``floor`` (upper triangle)."""
        matrix = np.asarray(probabilities)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"pair probabilities must be square (L, L), got shape {matrix.shape}")
        length = matrix.shape[0]
        upper = np.triu(np.asarray(matrix, dtype=np.float64), k=1)
        i, j = np.nonzero(upper > floor)  # row-major: sorted by (i, j)
        return cls(length, i, j, matrix[i, j], floor, upper.sum(axis=1) + upper.sum(axis=0), float(upper.sum()))

    def __len__(self) -> int:
        """Listed pairs."""
        return len(self.p)

    def pairs(self) -> np.ndarray:
        """The listed pairs as an ``(n, 2)`` int64 array of 0-based ``(i, j)``."""
        return np.stack([self.i, self.j], axis=1).astype(np.int64)

    def to_dense(self, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """The symmetric ``(L, L)`` matrix, zero where no pair is listed (mind the size)."""
        matrix = np.zeros((self.length, self.length), dtype=dtype)
        matrix[self.i, self.j] = self.p
        matrix[self.j, self.i] = self.p
        return matrix

    def above(self, floor: float) -> "SparsePairProbabilities":
        """The same RNA with only the pairs above ``floor`` (>= the current floor) listed."""
        if floor < self.floor:
            raise ValueError(f"cannot lower the floor from {self.floor} to {floor}: those pairs are not kept")
        keep = self.p > floor
        return dataclasses.replace(self, i=self.i[keep], j=self.j[keep], p=self.p[keep], floor=floor)

    def candidates(self, threshold: float, min_hairpin: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(i, j, p)`` of the pairs with ``p > threshold`` and ``j - i > min_hairpin``, in
        ``(i, j)`` order (the order :func:`protrna.structure.resolve_conflicts` breaks ties by).
        Raises if ``threshold`` is below the floor: pairs it needs were not kept."""
        if threshold < self.floor:
            raise ValueError(
                f"the pair list holds probabilities above {self.floor:g} only, so a threshold of "
                f"{threshold:g} cannot be applied to it; fold again with a floor of {threshold:g} or less "
                "(--pair-floor)"
            )
        keep = (self.p > threshold) & (self.j - self.i > min_hairpin)
        return self.i[keep].astype(np.int64), self.j[keep].astype(np.int64), self.p[keep].astype(np.float64)

    def lookup(self, pairs: np.ndarray) -> np.ndarray:
        """Probability of each ``(i, j)`` of ``pairs`` (``(n, 2)``, either order), 0 where not listed
        (such a pair has ``p <= floor``, or was not predicted)."""
        pairs = np.sort(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), axis=1)
        keys = self.i.astype(np.int64) * self.length + self.j
        wanted = pairs[:, 0] * self.length + pairs[:, 1]
        if not len(keys):
            return np.zeros(len(wanted))
        at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        return np.where(keys[at] == wanted, self.p[at].astype(np.float64), 0.0)

    def check(self, source: str = "") -> "SparsePairProbabilities":
        """Raise ``ValueError`` naming ``source`` if the list is not a valid one (module doc)."""
        where = _where(source)
        n = len(self.p)
        if not (len(self.i) == len(self.j) == n) or self.i.ndim != 1:
            raise ValueError(f"{where}i, j and p must be equally long 1-d arrays, got {len(self.i)}, {len(self.j)}, {n}")
        if self.pairing.shape != (self.length,):
            raise ValueError(f"{where}pairing has shape {self.pairing.shape}, expected ({self.length},)")
        if n:
            outside = (self.i < 0) | (self.j >= self.length) | (self.i >= self.j)
            if outside.any():
                k = int(np.flatnonzero(outside)[0])
                raise ValueError(f"{where}pair ({self.i[k] + 1}, {self.j[k] + 1}) is not i < j within "
                                 f"1..{self.length}")
            bad = ~np.isfinite(self.p) | (self.p < -1e-6) | (self.p > 1 + 1e-6)
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                raise ValueError(f"{where}pair probability at ({self.i[k] + 1}, {self.j[k] + 1}) is "
                                 f"{float(self.p[k])!r}, not in [0, 1]")
            keys = self.i.astype(np.int64) * self.length + self.j
            if (np.diff(keys) <= 0).any():
                raise ValueError(f"{where}pairs must be sorted by (i, j) without repeats")
        if not np.isfinite(self.pairing).all() or not np.isfinite(self.expected_pairs):
            raise ValueError(f"{where}pairing / expected_pairs are not finite")
        return self

    # --- files -------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the ``.npz`` of the module doc, atomically (a kill leaves the old file or none)."""
        path = Path(path)
        scratch = path.with_name(f".{path.name}.tmp")
        with open(scratch, "wb") as handle:
            np.savez_compressed(
                handle, format=np.array(FORMAT), **{name: getattr(self, name) for name in _ARRAYS},
                **{name: np.array(getattr(self, name)) for name in _SCALARS},
            )
        os.replace(scratch, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SparsePairProbabilities":
        """Read and check a file written by :meth:`save`; errors name the file."""
        path = Path(path)
        try:
            data = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise
        except Exception as error:  # not a zip, torn, or pickled: one line, naming the file
            raise ValueError(f"{path}: cannot read it as .npz ({type(error).__name__}: {error})") from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: a single .npy array, not a protrna sparse pair file")
        with data:
            if "format" not in data.files or str(data["format"]) != FORMAT:
                raise ValueError(f"{path}: not a protrna sparse pair file (no format {FORMAT!r})")
            missing = [name for name in _ARRAYS + _SCALARS if name not in data.files]
            if missing:
                raise ValueError(f"{path}: missing {', '.join(missing)}")
            values = {name: data[name] for name in _ARRAYS}
            values.update({name: data[name].item() for name in _SCALARS})
        return cls(**values).check(str(path))
