"""Batches for training: padding, token-budget grouping, and masked-LM batches.

A batch handed to the training loop (:mod:`protrna.train.loop`) is a dict of CPU tensors plus two
counts the loop needs before it runs the model: ``n_items`` (how many terms the loss sums, here
masked positions) and ``n_tokens`` (real tokens, for throughput).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch

from ..alphabet import Alphabet
from .masking import IGNORE_INDEX, mask_tokens
from .streaming import FastaStream


def pad_token_ids(sequences: Sequence[Sequence[int]], alphabet: Alphabet | None = None) -> torch.Tensor:
    """``<cls> ids <eos>`` per sequence, right-padded with ``<pad>`` into a (B, T) tensor.

    >>> pad_token_ids([[33, 34], [35]]).tolist()
    [[0, 33, 34, 2], [0, 35, 2, 1]]
    """
    alphabet = alphabet or Alphabet()
    width = max(len(ids) for ids in sequences) + 2
    tokens = torch.full((len(sequences), width), alphabet.padding_idx, dtype=torch.long)
    for row, ids in enumerate(sequences):
        tokens[row, 0] = alphabet.cls_idx
        tokens[row, 1 : len(ids) + 1] = torch.as_tensor(ids, dtype=torch.long)
        tokens[row, len(ids) + 1] = alphabet.eos_idx
    return tokens


class TokenBudgetGroups:
    """Groups consecutive items of a resumable stream into lists for one batch each.

    With ``max_tokens`` a group grows while ``len(group) * longest`` (tokens after padding,
    BOS/EOS included) stays within the budget, so short RNAs come many to a batch and long ones
    few; an item alone over the budget forms a group of its own. With ``batch_size`` every group
    has that many items. Give exactly one of the two.

    ``state_dict()`` holds the stream's state and the one item read but not yet placed.

    >>> groups = TokenBudgetGroups([("a", [1] * 6), ("b", [1] * 2), ("c", [1] * 6)], max_tokens=16)
    >>> [[name for name, _ in group] for group in groups]
    [['a', 'b'], ['c']]
    """

    def __init__(
        self,
        items: Iterable[tuple[str, list[int]]],
        *,
        max_tokens: int | None = None,
        batch_size: int | None = None,
    ):
        if (max_tokens is None) == (batch_size is None):
            raise ValueError("give exactly one of max_tokens and batch_size")
        if (max_tokens or 1) < 1 or (batch_size or 1) < 1:
            raise ValueError(f"max_tokens and batch_size must be positive, got {max_tokens}, {batch_size}")
        self.items = items
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.pending: tuple[str, list[int]] | None = None

    def state_dict(self) -> dict:
        state = self.items.state_dict() if hasattr(self.items, "state_dict") else None
        pending = None if self.pending is None else (self.pending[0], list(self.pending[1]))
        return {"items": state, "pending": pending}

    def load_state_dict(self, state: dict) -> None:
        if state["items"] is not None:
            self.items.load_state_dict(state["items"])
        self.pending = None if state["pending"] is None else tuple(state["pending"])

    def _fits(self, group: list, item: tuple[str, list[int]]) -> bool:
        if not group:
            return True
        if self.batch_size is not None:
            return len(group) < self.batch_size
        longest = max(len(item[1]), *(len(ids) for _, ids in group)) + 2
        return (len(group) + 1) * longest <= self.max_tokens

    def __iter__(self) -> Iterator[list[tuple[str, list[int]]]]:
        source = iter(self.items)
        group: list[tuple[str, list[int]]] = []
        while True:
            if self.pending is None:
                try:
                    self.pending = next(source)
                except StopIteration:
                    break
            if not self._fits(group, self.pending):
                yield group
                group = []
            group.append(self.pending)
            self.pending = None
        if group:
            yield group


class MLMBatches:
    """Masked-LM training batches from FASTA files: the data side of ``protrna pretrain``.

    Yields dicts with ``input_ids`` (B, T) after masking, ``attention_mask`` (B, T),
    ``labels`` (B, T; ``-100`` where not scored), ``n_items`` (scored positions) and
    ``n_tokens`` (non-pad tokens). Its ``state_dict()`` covers the stream, the pending item and
    the masking random state, so a resumed run gets the very batches it would have got.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "x.fa")
    >>> _ = open(path, "w").write(">r1\\nACGUACGUAC\\n>r2\\nGGGAAAUUUCCC\\n")
    >>> batches = MLMBatches(FastaStream([path], loop=False), batch_size=2, seed=0)
    >>> batch = next(iter(batches))
    >>> batch["input_ids"].shape, batch["n_tokens"]
    (torch.Size([2, 14]), 26)
    """

    def __init__(
        self,
        sequences: FastaStream,
        *,
        max_tokens: int | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        mask_prob: float = 0.15,
    ):
        self.groups = TokenBudgetGroups(sequences, max_tokens=max_tokens, batch_size=batch_size)
        self.mask_prob = mask_prob
        self.alphabet = Alphabet()
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        return {"groups": self.groups.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.groups.load_state_dict(state["groups"])
        self.generator.set_state(state["generator"])

    def __iter__(self) -> Iterator[dict]:
        for group in self.groups:
            tokens = pad_token_ids([ids for _, ids in group], self.alphabet)
            inputs, labels = mask_tokens(
                tokens, self.generator, mask_prob=self.mask_prob, alphabet=self.alphabet
            )
            attention_mask = tokens.ne(self.alphabet.padding_idx)
            yield {
                "input_ids": inputs,
                "attention_mask": attention_mask.long(),
                "labels": labels,
                "n_items": int(labels.ne(IGNORE_INDEX).sum()),
                "n_tokens": int(attention_mask.sum()),
            }
