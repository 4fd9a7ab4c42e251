"""Batches: the one rule by which records are cut into batches, and the training-side batchers.

Every batcher in the package (language-model inference, the structure head, evaluation and the
length buckets of training, the token-budget groups of pretraining) uses the same rule, in
:func:`fits`: a batch grows while it has at most ``max_items`` records and ``count x cost(longest)``
(its size after padding) stays within ``max_cost``; a record alone over the budget gets a batch of
its own. :func:`cut_batches` cuts a given order with it; :func:`sorted_batches` sorts by length
first (the least padding).

A batch handed to the training loop (:mod:`protrna.train.loop`) is a dict of CPU tensors plus two
counts the loop needs before it runs the model: ``n_items`` (how many terms the loss sums, here
masked positions) and ``n_tokens`` (real tokens, for throughput).
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from ..alphabet import Alphabet
from .masking import IGNORE_INDEX, mask_tokens
from .streaming import FastaStream

#: Padded cost of one row of a given length; a batch costs its row count x its longest row's cost.
Cost = Callable[[int], int]


def pair_cost(length: int) -> int:
    """Cost of one padded row for a pair (L x L) head."""
    return length * length


def token_cost(length: int) -> int:
    """Cost of one padded row for a per-token model (BOS and EOS included)."""
    return length + 2


def same_cost(length: int) -> int:
    """Cost of a row that is already counted in the unit of the budget."""
    return length


def fits(count: int, longest: int, *, max_items: int | None, max_cost: int | None, cost: Cost) -> bool:
    """Whether ``count`` records whose longest is ``longest`` make one batch within the limits.

    >>> fits(3, 100, max_items=None, max_cost=300, cost=same_cost), fits(4, 100, max_items=None, max_cost=300, cost=same_cost)
    (True, False)
    """
    return (max_items is None or count <= max_items) and (max_cost is None or count * cost(longest) <= max_cost)


def cut_batches(
    order: Sequence[int],
    lengths: Sequence[int],
    *,
    max_items: int | None = None,
    max_cost: int | None = None,
    cost: Cost = pair_cost,
) -> list[list[int]]:
    """Cut ``order`` (record indices, in the order wanted) into consecutive batches (see :func:`fits`).

    >>> cut_batches([0, 1, 2, 3], [10, 10, 20, 5], max_items=3, max_cost=250)
    [[0, 1], [2], [3]]
    """
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        candidate = max(longest, lengths[index])
        if current and not fits(len(current) + 1, candidate, max_items=max_items, max_cost=max_cost, cost=cost):
            batches.append(current)
            current, candidate = [], lengths[index]
        current.append(index)
        longest = candidate
    if current:
        batches.append(current)
    return batches


def sorted_batches(
    lengths: Sequence[int],
    *,
    max_items: int | None = None,
    max_cost: int | None = None,
    cost: Cost = pair_cost,
    longest_first: bool = False,
) -> list[list[int]]:
    """Deterministic batches: records sorted by length (ties in input order), then cut.

    Longest first suits inference (the first batch shows at once whether the budget fits
    in memory); shortest first is the evaluation order of training.

    >>> sorted_batches([30, 10, 20], max_items=2)
    [[1, 2], [0]]
    >>> sorted_batches([5, 100, 7, 98], max_cost=210, cost=same_cost, longest_first=True)
    [[1, 3], [2, 0]]
    """
    keys = -np.asarray(lengths, dtype=np.int64) if longest_first else np.asarray(lengths, dtype=np.int64)
    order = np.argsort(keys, kind="stable").tolist()
    return cut_batches(order, lengths, max_items=max_items, max_cost=max_cost, cost=cost)


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
        longest = max(len(ids) for _, ids in [*group, item])
        return not group or fits(len(group) + 1, longest, max_items=self.batch_size, max_cost=self.max_tokens,
                                 cost=token_cost)

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
            tokens = self.alphabet.pad_batch([ids for _, ids in group])
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
