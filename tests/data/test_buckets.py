"""Length-bucketed batches for head training: budgets, epochs, sharding, exact resume."""

import itertools

import numpy as np
import pytest

from protrna.data.batching import cut_batches, pair_cost, sorted_batches, token_cost
from protrna.data.buckets import LengthBucketBatches

LENGTHS = np.random.default_rng(0).integers(5, 300, size=200).tolist()


def test_budgets_hold_and_an_epoch_covers_every_record_once():
    sampler = LengthBucketBatches(LENGTHS, max_items=8, max_cost=2**16, cost=pair_cost, seed=3)
    epoch = sampler.epoch_batches(0)
    assert sorted(i for batch in epoch for i in batch) == list(range(len(LENGTHS)))
    for batch in epoch:
        longest = max(LENGTHS[i] for i in batch)
        assert len(batch) <= 8
        assert len(batch) == 1 or len(batch) * longest**2 <= 2**16
    # Bucketing: a batch spans far less than the whole range of lengths.
    spreads = [max(LENGTHS[i] for i in b) - min(LENGTHS[i] for i in b) for b in epoch if len(b) > 1]
    assert np.median(spreads) < 40
    assert sampler.epoch_batches(1) != epoch, "every epoch mixes differently"
    assert sampler.epoch_batches(0) == epoch, "an epoch is a function of (seed, epoch)"


def test_processes_get_disjoint_equal_shares():
    shares = [LengthBucketBatches(LENGTHS, max_items=8, seed=1, rank=r, world_size=3) for r in range(3)]
    firsts = [list(itertools.islice(iter(s), len(s))) for s in shares]
    assert len({len(f) for f in firsts}) == 1
    seen = [i for f in firsts for batch in f for i in batch]
    assert len(seen) == len(set(seen))


def test_resume_continues_with_the_same_batches():
    sampler = LengthBucketBatches(LENGTHS, max_items=8, max_cost=4096, cost=token_cost, seed=5)
    stream = iter(sampler)
    for _ in range(37):  # past the end of the first epoch
        next(stream)
    state = sampler.state_dict()
    expected = [next(stream) for _ in range(20)]
    again = LengthBucketBatches(LENGTHS, max_items=8, max_cost=4096, cost=token_cost, seed=5)
    again.load_state_dict(state)
    assert list(itertools.islice(iter(again), 20)) == expected
    # Another training set, or other limits: the saved position would point at other batches.
    for other in (LengthBucketBatches(LENGTHS[:-1], max_items=8, max_cost=4096, cost=token_cost, seed=5),
                  LengthBucketBatches(LENGTHS, max_items=4, max_cost=4096, cost=token_cost, seed=5)):
        with pytest.raises(ValueError, match="resume with the same --train"):
            other.load_state_dict(state)


def test_without_pool_batches_are_plain_random():
    sampler = LengthBucketBatches(LENGTHS, max_items=16, seed=0, pool=0)
    spreads = [max(LENGTHS[i] for i in b) - min(LENGTHS[i] for i in b) for b in sampler.epoch_batches(0)]
    assert np.median(spreads) > 150


def test_an_oversized_record_gets_its_own_batch():
    assert cut_batches([0, 1, 2], [10, 500, 10], max_items=4, max_cost=1000) == [[0], [1], [2]]
    assert sorted_batches([3, 1, 2], max_items=2) == [[1, 2], [0]]


def test_too_few_batches_for_the_processes_is_an_error():
    with pytest.raises(ValueError, match="fewer batches than the 4 processes"):
        LengthBucketBatches([5, 6], max_items=8, world_size=4)
