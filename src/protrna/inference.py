"""Running the language model over many RNAs: token-budget batches and windows for long RNAs.

The model sees at most 510 nt at once (512 tokens with BOS and EOS). Longer RNAs are cut into
overlapping windows, each embedded on its own with its own BOS/EOS, and every nucleotide's vector
is the plain average over the windows that contain it:

* windows are ``window`` nt long and start every ``window - overlap`` nt; the last one is moved
  back to end exactly at the sequence end (so no window is short);
* per-nucleotide vectors are averaged over covering windows; the BOS vector is the average of the
  windows' BOS vectors.

Both ``protrna embed`` and ``protrna fold`` use :class:`WindowedEncoder`, so their long-RNA
behaviour is the same.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Sequence

import torch

from .alphabet import MAX_RESIDUES, encode_rna
from .model import ProtRNA

DEFAULT_OVERLAP = 128


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
    """Representations of one RNA: ``per_token[layer]`` (L, D) and ``bos[layer]`` (D,), float32."""

    index: int
    id: str
    length: int
    per_token: dict[int, torch.Tensor]
    bos: dict[int, torch.Tensor]


@dataclasses.dataclass
class _Piece:
    item: int  # position in the chunk
    start: int
    ids: list[int]


class _Accumulator:
    """Sums window outputs per nucleotide until every window of a sequence has been seen."""

    def __init__(self, length: int, pieces: int):
        self.length = length
        self.pending = pieces
        self.per_token: dict[int, torch.Tensor] = {}
        self.bos: dict[int, torch.Tensor] = {}
        self.counts = torch.zeros(length, 1)

    def add(self, start: int, per_token: dict[int, torch.Tensor], bos: dict[int, torch.Tensor]) -> None:
        n = next(iter(per_token.values())).shape[0]
        for layer, values in per_token.items():
            if layer not in self.per_token:
                self.per_token[layer] = torch.zeros(self.length, values.shape[-1])
                self.bos[layer] = torch.zeros(values.shape[-1])
            self.per_token[layer][start : start + n] += values
            self.bos[layer] += bos[layer]
        self.counts[start : start + n] += 1
        self.pending -= 1

    def result(self, windows: int) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        if windows == 1:
            return self.per_token, self.bos
        per_token = {k: v / self.counts for k, v in self.per_token.items()}
        return per_token, {k: v / windows for k, v in self.bos.items()}


def make_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group indices, longest first, so that ``batch size x longest`` stays within ``max_tokens``.

    A single item longer than the budget still gets a batch of its own.

    >>> make_batches([5, 100, 7, 98], max_tokens=210)
    [[1, 3], [2, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted longest first, so the batch's first item sets its padded width.
        width = lengths[current[0]] if current else lengths[i]
        if current and width * (len(current) + 1) > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


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
        max_tokens: int = 1536,
        window: int = MAX_RESIDUES,
        overlap: int = DEFAULT_OVERLAP,
    ):
        self.model = model
        self.layers = sorted(set(layers))
        self.max_tokens = max_tokens
        self.window = window
        self.overlap = overlap
        plan_windows(window + 1, window, overlap)  # validates window/overlap now, not mid-run

    def encode(self, records: Iterable[tuple[str, str]], first_index: int = 0) -> Iterator[EncodedSequence]:
        """Yield one :class:`EncodedSequence` per ``(id, sequence)``, in completion order.

        Sequences are sorted by length inside ``records`` (pass a chunk of a large file at a
        time); ``index`` is the position in ``records`` plus ``first_index``.
        """
        records = list(records)
        pieces: list[_Piece] = []
        accumulators: list[_Accumulator] = []
        windows_of: list[int] = []
        for item, (name, sequence) in enumerate(records):
            ids = encode_rna(sequence, name)
            spans = plan_windows(len(ids), self.window, self.overlap)
            pieces.extend(_Piece(item, start, ids[start:end]) for start, end in spans)
            accumulators.append(_Accumulator(len(ids), len(spans)))
            windows_of.append(len(spans))

        for batch in make_batches([len(p.ids) + 2 for p in pieces], self.max_tokens):
            batch_pieces = [pieces[i] for i in batch]
            outputs = self._run([p.ids for p in batch_pieces])
            for row, piece in enumerate(batch_pieces):
                n = len(piece.ids)
                per_token = {k: v[row, 1 : n + 1] for k, v in outputs.items()}
                bos = {k: v[row, 0] for k, v in outputs.items()}
                accumulator = accumulators[piece.item]
                accumulator.add(piece.start, per_token, bos)
                if accumulator.pending == 0:
                    per_token, bos = accumulator.result(windows_of[piece.item])
                    name = records[piece.item][0]
                    accumulators[piece.item] = None  # free memory early
                    yield EncodedSequence(first_index + piece.item, name, len(per_token[self.layers[0]]), per_token, bos)

    @torch.inference_mode()
    def _run(self, token_lists: list[list[int]]) -> dict[int, torch.Tensor]:
        tokens = self.model.alphabet.pad_batch(token_lists)
        out = self.model(tokens, repr_layers=self.layers)
        return {k: v.float().cpu() for k, v in out["representations"].items()}
