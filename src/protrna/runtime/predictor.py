"""Language model + RotaFormer head: pair probabilities for RNAs of any length.

The language model runs in 510-nt windows where needed (:mod:`.encoder`) and the head sees the
whole RNA at once. Records are taken in chunks of :data:`CHUNK_RECORDS` in input order; inside a
chunk, the language-model batches and the head batches (B x L x L within the pair budget, sorted
by length) are planned over every record of the chunk, whatever a resumed job already has, so a
record's probabilities depend only on the input and the settings.
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
from ..structure import sigmoid
from .defaults import DEFAULT_HEAD, DEFAULT_MODEL, DEFAULT_OVERLAP
from .encoder import EncodedSequence, WindowedEncoder
from .models import pack_if_owned, pair_budget, prepare_head, prepare_model, token_budget

#: Records whose language-model outputs are held at once before the head runs on them.
CHUNK_RECORDS = 64


@dataclasses.dataclass
class PairProbabilities:
    """The head's output for one RNA: ``probabilities`` (L, L) float32, symmetric."""

    index: int
    id: str
    sequence: str
    probabilities: np.ndarray


class StructurePredictor:
    """Language model + structure head: pair probabilities for RNAs of any length.

    >>> from protrna import ProtRNA, ProtRNAConfig
    >>> from protrna.heads.ss import RotaFormer, RotaFormerConfig
    >>> lm = ProtRNA(ProtRNAConfig(num_layers=1, embed_dim=64, attention_heads=1))
    >>> head = RotaFormer(RotaFormerConfig(input_dim=64, num_blocks=1))
    >>> [p.probabilities.shape for p in StructurePredictor(lm, head).predict([("a", "GGGAAACCC")])]
    [(9, 9)]
    """

    def __init__(
        self,
        lm: ProtRNA,
        head: RotaFormer,
        *,
        max_tokens: int | None = None,
        window_overlap: int = DEFAULT_OVERLAP,
        max_pairs: int | None = None,
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

    def predict(
        self,
        records: Iterable[tuple[str, str] | str],
        first_index: int = 0,
        skip: Collection[int] = (),
    ) -> Iterator[PairProbabilities]:
        """Yield pair probabilities for each ``(id, sequence)`` (or bare sequence, named ``#i``),
        in completion order, which is not the input order: each result carries its ``index``.

        ``skip``: positions in ``records`` not wanted (a resumed job's finished records); they
        still count in the batch plan, so the others' numbers are those of a full run.
        """
        if isinstance(records, str):
            raise TypeError(f"pass a list of sequences, e.g. [{records[:20]!r}], not one string")
        records = [(f"#{first_index + i}", r) if isinstance(r, str) else tuple(r) for i, r in enumerate(records)]
        skip = set(skip)
        for start in range(0, len(records), CHUNK_RECORDS):
            chunk = records[start : start + CHUNK_RECORDS]
            done = {i - start for i in skip if start <= i < start + CHUNK_RECORDS}
            batches = sorted_batches([len(s) for _, s in chunk], max_cost=self.max_pairs, cost=pair_cost,
                                     longest_first=True)
            batches = [b for b in batches if not all(i in done for i in b)]
            needed = {i for b in batches for i in b}
            encoded = {e.index: e for e in self.encoder.encode(
                chunk, skip=[i for i in range(len(chunk)) if i not in needed])}
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
) -> StructurePredictor:
    """Load language model and head (names, paths or modules) onto one device, ready to predict."""
    lm = prepare_model(model, dtype, device)
    head = prepare_head(head, like=lm)
    max_tokens = token_budget(max_tokens, lm.device)
    pack_if_owned(lm, owned=isinstance(model, (str, Path)), max_tokens=max_tokens)
    return StructurePredictor(lm, head, max_tokens=max_tokens, window_overlap=window_overlap)
