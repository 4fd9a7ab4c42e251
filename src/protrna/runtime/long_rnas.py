"""Long RNAs: the structure head over overlapping local windows of whole-RNA representations.

The head costs O(L^3) time and O(L^2) memory over the RNA it sees, and the released one learnt
from RNAs of at most ~500 nt. An RNA longer than ``max_span`` (``N``) is therefore folded so:

1. the language model embeds the whole RNA (in its own 510-nt windows, averaged where they
   overlap: :mod:`.encoder`, as ``protrna embed`` does);
2. the head runs on windows of those representations, ``N`` nt long, starting every
   ``stride = N // 2`` nt, the last one moved back to end exactly at the 3' end
   (:func:`plan_span_windows`): each window is a complete head run of length ``N``;
3. each pair's probability is the plain mean over the windows that hold both bases.

What follows from the scheme:

* no pair with ``j - i >= N`` is predicted (no window holds both bases);
* every pair with ``j - i <= N - stride`` (:func:`complete_span`, 250 for ``N`` = 500) lies in
  at least one window and is predicted;
* a pair in between is predicted where a window happens to hold both bases, and not elsewhere
  (as RNAplfold's ``-L`` leaves out every pair wider than L; here the hard limit is ``N``);
* a pair in exactly one window gets that window's probability bit for bit; in general the
  result is *not* the whole-length head's, because the head's receptive field is its whole
  input: every pair of a window sees every base of it (triangle attention, triangle
  multiplication), and none outside it.

Time is linear in L (about ``2 L / N`` windows of fixed cost). The means are formed as windows
arrive, 5' to 3': once a window is done, the rows no later window reaches are final and are moved
to the pair list, so besides the list only one window's sums are held; the representations (L x
1280 float32, 5 kB a nucleotide) are the other part that grows with L.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..sparse_pairs import SparsePairProbabilities
from .encoder import plan_windows


def check_max_span(max_span: int | None) -> int:
    """``max_span`` as an int, 0 meaning "fold whole"; refuses negative and 1 (no pair fits).

    >>> check_max_span(None), check_max_span(500)
    (0, 500)
    """
    if max_span is None:
        return 0
    if max_span < 0 or max_span == 1 or max_span != int(max_span):
        raise ValueError(f"--max-span must be 0 (fold whole RNAs) or a window length of at least 2 nt, "
                         f"not {max_span}")
    return int(max_span)


def window_stride(max_span: int) -> int:
    """Start-to-start distance of the head's windows: half a window.

    >>> window_stride(500), window_stride(41)
    (250, 20)
    """
    return max(1, max_span // 2)


def complete_span(max_span: int) -> int:
    """The widest ``j - i`` that lies in some window wherever it is (see the module doc).

    >>> complete_span(500), complete_span(41)
    (250, 21)
    """
    return max_span - window_stride(max_span)


def plan_span_windows(length: int, max_span: int) -> list[tuple[int, int]]:
    """``(start, end)`` of the head's windows over an RNA of ``length`` nt.

    >>> plan_span_windows(1200, 500)
    [(0, 500), (250, 750), (500, 1000), (700, 1200)]
    >>> plan_span_windows(400, 500)
    [(0, 400)]
    """
    return plan_windows(length, window=max_span, overlap=max_span - window_stride(max_span))


class WindowMeans:
    """Mean pair probability over the windows of one RNA, fed window by window in plan order.

    >>> windows = plan_span_windows(6, 4)  # [(0, 4), (2, 6)]
    >>> means = WindowMeans(6, windows, floor=0.0)
    >>> for start, end in windows:
    ...     means.add(np.full((end - start, end - start), 0.25 if start == 0 else 0.75, np.float32))
    >>> result = means.result(max_span=4)
    >>> dict(zip(map(tuple, result.pairs().tolist()), result.p.tolist()))[(2, 3)]  # in both windows
    0.5
    """

    def __init__(self, length: int, windows: list[tuple[int, int]], floor: float):
        self.length, self.windows, self.floor = length, windows, floor
        self.done = 0
        # Sums and counts of the pairs still open: both bases in [carry_start, end of last window).
        self.carry_start = 0
        self.carry_sums: np.ndarray | None = None
        self.carry_counts: np.ndarray | None = None
        self.pairing = np.zeros(length)
        self.expected_pairs = 0.0
        self.listed: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, probabilities: np.ndarray) -> None:
        """The next window's symmetric ``(n, n)`` probabilities."""
        start, end = self.windows[self.done]
        n = end - start
        if probabilities.shape != (n, n):
            raise ValueError(f"window {self.done} ({start}-{end}) needs ({n}, {n}) probabilities, "
                             f"got {probabilities.shape}")
        self.done += 1
        sums = probabilities.astype(np.float64)
        counts = np.ones((n, n), dtype=np.int32)
        if self.carry_sums is not None:
            at, m = self.carry_start - start, len(self.carry_sums)
            sums[at : at + m, at : at + m] += self.carry_sums
            counts[at : at + m, at : at + m] += self.carry_counts
        following = self.windows[self.done][0] if self.done < len(self.windows) else end
        final = following - start  # local rows 0..final-1 are in no later window
        means = (sums[:final] / counts[:final]).astype(np.float32)  # (final, n)
        rows, cols = np.triu_indices(final, k=1, m=n)  # i < j, row-major: the list stays sorted
        values = means[rows, cols]
        weights = values.astype(np.float64)
        self.pairing += np.bincount(start + rows, weights, minlength=self.length)
        self.pairing += np.bincount(start + cols, weights, minlength=self.length)
        self.expected_pairs += float(weights.sum())
        keep = values > self.floor
        self.listed.append(((start + rows[keep]).astype(np.int32), (start + cols[keep]).astype(np.int32),
                            values[keep]))
        self.carry_start = following
        self.carry_sums, self.carry_counts = sums[final:, final:].copy(), counts[final:, final:].copy()

    def result(self, max_span: int) -> SparsePairProbabilities:
        if self.done != len(self.windows):
            raise RuntimeError(f"{self.done} of {len(self.windows)} windows added")
        i, j, p = (np.concatenate(parts) for parts in zip(*self.listed))
        return SparsePairProbabilities(self.length, i, j, p, self.floor, self.pairing, self.expected_pairs,
                                       max_span=max_span, complete_span=complete_span(max_span))


def fold_in_windows(
    window_probabilities: Callable[[list[tuple[int, int]]], list[np.ndarray]],
    length: int,
    max_span: int,
    floor: float,
    windows_per_call: int = 1,
) -> SparsePairProbabilities:
    """Mean pair probabilities of one RNA over the head's windows (module doc).

    ``window_probabilities(spans)`` runs the head on the representations of each ``(start, end)``
    of ``spans`` (at most ``windows_per_call`` of them) and returns their ``(n, n)`` maps.
    """
    windows = plan_span_windows(length, max_span)
    means = WindowMeans(length, windows, floor)
    for first in range(0, len(windows), windows_per_call):
        for probabilities in window_probabilities(windows[first : first + windows_per_call]):
            means.add(probabilities)
    return means.result(max_span)
