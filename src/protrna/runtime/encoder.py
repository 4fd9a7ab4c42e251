"""The language model over many RNAs: token-budget batches, and windows for long RNAs.

The model sees at most 510 nt at once (512 tokens with BOS and EOS). Longer RNAs are cut into
overlapping windows, each embedded on its own with its own BOS/EOS, and every nucleotide's vector
is the plain average over the windows that contain it:

* windows are ``window`` nt long and start every ``window - overlap`` nt; the last one is moved
  back to end exactly at the sequence end (so no window is short);
* per-nucleotide vectors are averaged over covering windows; the BOS vector is the average of the
  windows' BOS vectors.

Batches are planned over all the records handed in at once (windows sorted longest first, cut by
:func:`protrna.data.batching.sorted_batches`), so a record's numbers depend only on those records
and the settings. A resumed job passes the records it already has as ``skip``: the batches that
hold only such records are not run, every other batch is run whole, so what it produces equals an
uninterrupted run bit for bit. Outputs stay on the model's device, in float32.

``protrna embed``, ``fold``, ``score`` and the training feature cache all use
:class:`WindowedEncoder`, so their long-RNA behaviour is the same.
"""

from __future__ import annotations

import dataclasses
from typing import Collection, Iterable, Iterator, Sequence

import torch

from ..alphabet import MAX_RESIDUES, encode_rna
from ..data.batching import same_cost, sorted_batches
from ..model import ProtRNA
from .defaults import CPU_MAX_TOKENS, DEFAULT_OVERLAP


def plan_windows(length: int, window: int = MAX_RESIDUES, overlap: int = DEFAULT_OVERLAP) -> list[tuple[int, int]]:
    """``(start, end)`` of the windows covering ``length`` nt.

    >>> plan_windows(300)
    [(0, 300)]
    >>> plan_windows(1000)
    [(0, 510), (382, 892), (490, 1000)]
    """
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window), got {overlap} for window {window}")
    if length <= window:
        return [(0, length)]
    stride = window - overlap
    windows = []
    start = 0
    while start + window < length:
        windows.append((start, start + window))
        start += stride
    windows.append((length - window, length))
    return windows


@dataclasses.dataclass
class EncodedSequence:
    """Representations of one RNA: ``per_token[layer]`` (L, D) and ``bos[layer]`` (D,), float32,
    on the model's device."""

    index: int
    id: str
    length: int
    per_token: dict[int, torch.Tensor]
    bos: dict[int, torch.Tensor]


@dataclasses.dataclass
class _Piece:
    item: int  # position in the records handed in
    start: int
    ids: list[int]


class _Accumulator:
    """Sums window outputs per nucleotide until every window of a sequence has been seen."""

    def __init__(self, length: int, pieces: int):
        self.length = length
        self.windows = self.pending = pieces
        self.per_token: dict[int, torch.Tensor] = {}
        self.bos: dict[int, torch.Tensor] = {}
        self.counts: torch.Tensor | None = None

    def add(self, start: int, per_token: dict[int, torch.Tensor], bos: dict[int, torch.Tensor]) -> None:
        self.pending -= 1
        if self.windows == 1:  # the common case: no sums, no copies
            self.per_token, self.bos = per_token, bos
            return
        n = next(iter(per_token.values())).shape[0]
        for layer, values in per_token.items():
            if layer not in self.per_token:
                self.per_token[layer] = values.new_zeros(self.length, values.shape[-1])
                self.bos[layer] = values.new_zeros(values.shape[-1])
                self.counts = values.new_zeros(self.length, 1)
            self.per_token[layer][start : start + n] += values
            self.bos[layer] += bos[layer]
        self.counts[start : start + n] += 1

    def result(self) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        if self.windows == 1:
            return self.per_token, self.bos
        per_token = {k: v / self.counts for k, v in self.per_token.items()}
        return per_token, {k: v / self.windows for k, v in self.bos.items()}


class WindowedEncoder:
    """Embeds RNAs of any length with a :class:`ProtRNA` in token-budget batches.

    >>> from protrna import ProtRNA, ProtRNAConfig
    >>> model = ProtRNA(ProtRNAConfig(num_layers=1, embed_dim=64, attention_heads=1))
    >>> encoder = WindowedEncoder(model, layers=[1], window=8, overlap=4)
    >>> [(r.id, tuple(r.per_token[1].shape)) for r in encoder.encode([("a", "ACGUACGUACGU"), ("b", "GG")])]
    [('a', (12, 64)), ('b', (2, 64))]
    """

    def __init__(
        self,
        model: ProtRNA,
        layers: Sequence[int],
        max_tokens: int = CPU_MAX_TOKENS,
        window: int = MAX_RESIDUES,
        overlap: int = DEFAULT_OVERLAP,
    ):
        self.model = model
        self.layers = sorted(set(layers))
        self.max_tokens = max_tokens
        self.window = window
        self.overlap = overlap
        plan_windows(window + 1, window, overlap)  # validates window/overlap now, not mid-run

    def encode(
        self,
        records: Iterable[tuple[str, str]],
        first_index: int = 0,
        skip: Collection[int] = (),
    ) -> Iterator[EncodedSequence]:
        """Yield one :class:`EncodedSequence` per ``(id, sequence)``, in completion order.

        The batches are planned over all of ``records`` (pass a chunk of a large file at a time);
        ``index`` is the position in ``records`` plus ``first_index``. Records whose position is
        in ``skip`` are not yielded, and batches that hold nothing else are not run.
        """
        records = list(records)
        pieces: list[_Piece] = []
        accumulators: list[_Accumulator | None] = []
        for item, (name, sequence) in enumerate(records):
            ids = encode_rna(sequence, name)
            spans = plan_windows(len(ids), self.window, self.overlap)
            pieces.extend(_Piece(item, start, ids[start:end]) for start, end in spans)
            accumulators.append(_Accumulator(len(ids), len(spans)))
        skip = set(skip)

        batches = sorted_batches([len(p.ids) + 2 for p in pieces], max_cost=self.max_tokens, cost=same_cost,
                                 longest_first=True)
        for batch in batches:
            batch_pieces = [pieces[i] for i in batch]
            if all(p.item in skip for p in batch_pieces):
                continue
            outputs = self._run([p.ids for p in batch_pieces])
            for row, piece in enumerate(batch_pieces):
                if piece.item in skip:
                    continue
                n = len(piece.ids)
                accumulator = accumulators[piece.item]
                accumulator.add(piece.start, {k: v[row, 1 : n + 1] for k, v in outputs.items()},
                                {k: v[row, 0] for k, v in outputs.items()})
                if accumulator.pending == 0:
                    per_token, bos = accumulator.result()
                    accumulators[piece.item] = None  # free memory early
                    yield EncodedSequence(first_index + piece.item, records[piece.item][0], accumulator.length,
                                          per_token, bos)

    @torch.inference_mode()
    def _run(self, token_lists: list[list[int]]) -> dict[int, torch.Tensor]:
        tokens = self.model.alphabet.pad_batch(token_lists).to(self.model.device)
        out = self.model(tokens, repr_layers=self.layers)
        return {k: v.float() for k, v in out["representations"].items()}
