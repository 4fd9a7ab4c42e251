"""Language model + RotaFormer head: pair probabilities for RNAs of any length.

The language model runs in 510-nt windows where needed (:mod:`.encoder`). The head sees the whole
RNA at once, unless the predictor has a ``max_span`` and the RNA is longer: then the head runs on
local windows of ``max_span`` nt and the result is a pair list (:mod:`.long_rnas`).

Records are taken in chunks of :data:`CHUNK_RECORDS` in input order; inside a chunk, the
language-model batches and the head batches (B x L x L within the pair budget, sorted by length)
are planned over every record of the chunk, whatever a resumed job already has, so a record's
probabilities depend only on the input and the settings. RNAs folded in windows are left out of
the whole-RNA head batches (each has its own, of windows), so the others' batches are those of
a run without them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Collection, Iterable, Iterator

import numpy as np
import torch

from ..data.batching import pair_cost, sorted_batches
from ..heads.ss import RotaFormer
from ..model import ProtRNA
from ..sparse_pairs import SparsePairProbabilities
from ..structure import sigmoid
from .defaults import DEFAULT_HEAD, DEFAULT_MODEL, DEFAULT_OVERLAP, DEFAULT_PAIR_FLOOR
from .encoder import EncodedSequence, WindowedEncoder
from .long_rnas import check_max_span, fold_in_windows, plan_span_windows
from .models import pack_if_owned, pair_budget, prepare_head, prepare_model, token_budget

#: Records whose language-model outputs are held at once before the head runs on them.
CHUNK_RECORDS = 64


@dataclasses.dataclass
class PairProbabilities:
    """The head's output for one RNA: ``probabilities`` (L, L) float32, symmetric, or for an RNA
    longer than the predictor's ``max_span`` its pair list (:attr:`sparse` is then True)."""

    index: int
    id: str
    sequence: str
    probabilities: np.ndarray | SparsePairProbabilities

    @property
    def sparse(self) -> bool:
        return isinstance(self.probabilities, SparsePairProbabilities)


class StructurePredictor:
    """Language model + structure head: pair probabilities for RNAs of any length.

    >>> from protrna import ProtRNA, ProtRNAConfig
    >>> from protrna.heads.ss import RotaFormer, RotaFormerConfig
    >>> lm = ProtRNA(ProtRNAConfig(num_layers=1, embed_dim=64, attention_heads=1))
    >>> head = RotaFormer(RotaFormerConfig(input_dim=64, num_blocks=1))
    >>> [p.probabilities.shape for p in StructurePredictor(lm, head).predict([("a", "GGGAAACCC")])]
    [(9, 9)]
    >>> (long,) = StructurePredictor(lm, head, max_span=8).predict([("b", "GGGAAACCCUUUCCC")])
    >>> long.sparse, long.probabilities.length, long.probabilities.max_span
    (True, 15, 8)

    ``max_span`` (None or 0: every RNA whole, the default here; ``protrna fold`` uses
    :data:`~protrna.runtime.defaults.DEFAULT_MAX_SPAN`): RNAs up to that length are folded whole,
    exactly as without it; longer ones in windows of that length (:mod:`.long_rnas`), giving
    :class:`~protrna.sparse_pairs.SparsePairProbabilities`.
    """

    def __init__(
        self,
        lm: ProtRNA,
        head: RotaFormer,
        *,
        max_tokens: int | None = None,
        window_overlap: int = DEFAULT_OVERLAP,
        max_pairs: int | None = None,
        max_span: int | None = None,
    ):
        if head.config.input_dim != lm.embed_dim:
            raise ValueError(
                f"the head takes {head.config.input_dim}-wide representations but the language "
                f"model gives {lm.embed_dim}; use the head trained on this language model"
            )
        self.lm, self.head = lm, head.eval()
        self.encoder = WindowedEncoder(lm, [lm.num_layers], token_budget(max_tokens, lm.device),
                                       overlap=window_overlap)
        self.max_pairs = pair_budget(max_pairs, lm.device)
        self.max_span = check_max_span(max_span)

    def folds_in_windows(self, length: int) -> bool:
        """Whether an RNA of ``length`` nt goes through the head in windows."""
        return 0 < self.max_span < length

    def predict(
        self,
        records: Iterable[tuple[str, str] | str],
        first_index: int = 0,
        skip: Collection[int] = (),
        *,
        pair_floor: float = DEFAULT_PAIR_FLOOR,
    ) -> Iterator[PairProbabilities]:
        """Yield pair probabilities for each ``(id, sequence)`` (or bare sequence, named ``#i``),
        in completion order, which is not the input order: each result carries its ``index``.

        ``skip``: positions in ``records`` not wanted (a resumed job's finished records); they
        still count in the batch plan, so the others' numbers are those of a full run.
        ``pair_floor``: the pair lists of RNAs folded in windows keep the pairs above it.
        """
        if isinstance(records, str):
            raise TypeError(f"pass a list of sequences, e.g. [{records[:20]!r}], not one string")
        if not 0.0 <= pair_floor < 1.0:
            raise ValueError(f"--pair-floor is a pair probability in [0, 1), not {pair_floor}")
        records = [(f"#{first_index + i}", r) if isinstance(r, str) else tuple(r) for i, r in enumerate(records)]
        skip = set(skip)
        for start in range(0, len(records), CHUNK_RECORDS):
            chunk = records[start : start + CHUNK_RECORDS]
            done = {i - start for i in skip if start <= i < start + CHUNK_RECORDS}
            windowed = {i for i, (_, s) in enumerate(chunk) if self.folds_in_windows(len(s))}
            whole = [i for i in range(len(chunk)) if i not in windowed]
            batches = sorted_batches([len(chunk[i][1]) for i in whole], max_cost=self.max_pairs, cost=pair_cost,
                                     longest_first=True)
            batches = [[whole[k] for k in b] for b in batches]
            batches = [b for b in batches if not all(i in done for i in b)]
            needed = {i for b in batches for i in b} | (windowed - done)
            encoded = {}
            for e in self.encoder.encode(chunk, skip=[i for i in range(len(chunk)) if i not in needed]):
                if e.index in windowed:  # folded as soon as it is embedded: one long RNA held at a time
                    name, sequence = chunk[e.index]
                    yield PairProbabilities(first_index + start + e.index, name, sequence,
                                            self._fold_in_windows(e, pair_floor))
                else:
                    encoded[e.index] = e
            for batch in batches:
                results = self._head([encoded[i] for i in batch])
                for i, probabilities in zip(batch, results):
                    if i not in done:
                        name, sequence = chunk[i]
                        yield PairProbabilities(first_index + start + i, name, sequence, probabilities)
                for i in batch:
                    encoded.pop(i, None)  # free memory early

    @torch.inference_mode()
    def _head(self, encoded: list[EncodedSequence]) -> list[np.ndarray]:
        layer = self.lm.num_layers
        width = max(e.length for e in encoded)
        device, dtype = self.head_device_dtype()
        x = torch.zeros(len(encoded), width, self.lm.embed_dim, device=device, dtype=dtype)  # (B, L, D)
        for row, e in enumerate(encoded):
            x[row, : e.length] = e.per_token[layer].to(device=device, dtype=dtype)
        lengths = torch.tensor([e.length for e in encoded], device=device)
        mask = None if bool((lengths == width).all()) else torch.arange(width, device=device)[None] < lengths[:, None]
        logits = self.head.pair_logits(x, mask)  # (B, L, L)
        logits = logits.float().cpu().numpy()  # the one trip to the host
        return [sigmoid(logits[row, : e.length, : e.length]).astype(np.float32) for row, e in enumerate(encoded)]

    @torch.inference_mode()
    def _fold_in_windows(self, encoded: EncodedSequence, floor: float) -> SparsePairProbabilities:
        representations = encoded.per_token[self.lm.num_layers]  # (L, D), the whole RNA
        device, dtype = self.head_device_dtype()

        def window_probabilities(spans: list[tuple[int, int]]) -> list[np.ndarray]:
            x = torch.stack([representations[a:b] for a, b in spans]).to(device=device, dtype=dtype)  # (B, N, D)
            logits = self.head.pair_logits(x, None).float().cpu().numpy()  # (B, N, N), equal lengths
            return [sigmoid(row).astype(np.float32) for row in logits]

        # Windows all have max_span nt: as many to a head call as the pair budget holds.
        per_call = max(1, self.max_pairs // self.max_span**2)
        return fold_in_windows(window_probabilities, encoded.length, self.max_span, floor, per_call)

    def windows(self, length: int) -> list[tuple[int, int]]:
        """The head's ``(start, end)`` windows over an RNA of ``length`` nt (one: folded whole)."""
        return plan_span_windows(length, self.max_span) if self.folds_in_windows(length) else [(0, length)]

    def head_device_dtype(self) -> tuple[torch.device, torch.dtype]:
        parameter = next(self.head.parameters())
        return parameter.device, parameter.dtype


def load_predictor(
    model: ProtRNA | str | Path = DEFAULT_MODEL,
    head: RotaFormer | str | Path = DEFAULT_HEAD,
    *,
    dtype: str | None = None,
    device: str | None = None,
    max_tokens: int | None = None,
    window_overlap: int = DEFAULT_OVERLAP,
    max_span: int | None = None,
) -> StructurePredictor:
    """Load language model and head (names, paths or modules) onto one device, ready to predict
    (``max_span``: see :class:`StructurePredictor`)."""
    check_max_span(max_span)  # before a model of several GB is loaded
    lm = prepare_model(model, dtype, device)
    head = prepare_head(head, like=lm)
    max_tokens = token_budget(max_tokens, lm.device)
    pack_if_owned(lm, owned=isinstance(model, (str, Path)), max_tokens=max_tokens)
    return StructurePredictor(lm, head, max_tokens=max_tokens, window_overlap=window_overlap, max_span=max_span)
