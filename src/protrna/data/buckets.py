"""Length-bucketed batches over an in-memory set of records, for training heads.

``protrna pretrain`` streams a corpus it cannot hold; the head-training commands (``train-ss``,
``finetune``) work on a few thousand labelled RNAs whose lengths are known up front. For them an
epoch is a fixed function of ``(seed, epoch)``:

1. shuffle all record indices;
2. cut the shuffled order into pools of ``pool`` records and sort each pool by length, so RNAs of
   similar length end up together (little padding) while every epoch still mixes differently;
3. cut each pool into batches of at most ``max_items`` records whose padded ``cost`` stays within
   ``max_cost`` (for a structure head the cost of a batch is ``B * L_max**2`` pair cells);
4. shuffle the batches, and drop the last few so that every process gets the same number.

Process ``r`` of ``N`` takes batches ``r, r + N, ...``. Because the epoch is a pure function, the
whole state of the stream is ``(epoch, position)``: a resumed run gets exactly the batches it would
have got.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterator, Sequence

import numpy as np

from .batching import Cost, cut_batches, pair_cost

class LengthBucketBatches:
    """Endless, resumable, length-bucketed batches of record indices for one process.

    Args:
        lengths: length of each record (what ``cost`` is computed from).
        max_items: records per batch at most.
        max_cost: padded cost per batch at most (``None``: no limit).
        cost: cost of one padded row of a given length (:func:`pair_cost`, :func:`token_cost`).
        seed: the stream is a function of it; every process must pass the same.
        rank, world_size: this process's share (batches ``rank, rank + world_size, ...``).
        pool: records sorted together by length; ``0`` turns bucketing off (plain random
            batches, e.g. for pooled features of fixed size).

    >>> stream = iter(LengthBucketBatches([5, 50, 6, 52], max_items=2, seed=0))
    >>> sorted(sorted(next(stream)) for _ in range(2))  # one epoch: similar lengths together
    [[0, 2], [1, 3]]
    """

    def __init__(
        self,
        lengths: Sequence[int],
        *,
        max_items: int,
        max_cost: int | None = None,
        cost: Cost = pair_cost,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pool: int | None = None,
    ):
        if len(lengths) == 0:
            raise ValueError("no records to batch")
        if max_items < 1 or (max_cost is not None and max_cost < 1):
            raise ValueError(f"max_items and max_cost must be positive, got {max_items}, {max_cost}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.max_items, self.max_cost, self.cost = max_items, max_cost, cost
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.pool = 64 * max_items if pool is None else pool
        self.epoch, self.position = 0, 0
        if len(self.epoch_batches(0)) < world_size:
            raise ValueError(
                f"{len(lengths)} records make fewer batches than the {world_size} processes; "
                "use fewer processes or smaller batches"
            )

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Every process's batches of ``epoch``, in order (process r takes r, r + N, ...)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        batches: list[list[int]] = []
        pool = self.pool or len(order)
        for start in range(0, len(order), pool):
            chunk = order[start : start + pool]
            if self.pool:
                chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += cut_batches(
                chunk.tolist(), self.lengths, max_items=self.max_items, max_cost=self.max_cost, cost=self.cost
            )
        batches = [batches[i] for i in rng.permutation(len(batches))]
        usable = len(batches) - len(batches) % self.world_size
        return batches[:usable]

    def __len__(self) -> int:
        """Batches per epoch for this process (epochs differ slightly; this is epoch 0's)."""
        return len(self.epoch_batches(0)) // self.world_size

    def _layout(self) -> str:
        """What the batches are cut from: a position in them means nothing for other records
        or other batch limits."""
        digest = hashlib.sha256(self.lengths.tobytes())
        digest.update(repr((self.max_items, self.max_cost, self.seed, self.pool)).encode())
        return digest.hexdigest()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "layout": self._layout()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("layout", self._layout()) != self._layout():  # checkpoints before the check have none
            raise ValueError(
                "the checkpoint's position in the training data belongs to other training records or "
                "batch limits: resume with the same --train, --max-length, --batch-size, --max-pairs / "
                "--max-tokens and --seed"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            mine = self.epoch_batches(self.epoch)[self.rank :: self.world_size]
            while self.position < len(mine):
                batch = mine[self.position]
                self.position += 1
                yield batch
            self.epoch, self.position = self.epoch + 1, 0


class MappedBatches:
    """Turns a stream of index batches into training batches with ``collate``; keeps the
    stream's ``state_dict`` so the training loop can resume it exactly."""

    def __init__(self, indices: LengthBucketBatches, collate: Callable[[list[int]], dict]):
        self.indices = indices
        self.collate = collate

    def state_dict(self) -> dict:
        return self.indices.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.indices.load_state_dict(state)

    def __iter__(self) -> Iterator[dict]:
        for batch in self.indices:
            yield self.collate(batch)
