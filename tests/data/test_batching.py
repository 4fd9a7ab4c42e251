import itertools
import random

import pytest
import torch

from protrna.alphabet import Alphabet
from protrna.data.batching import MLMBatches, TokenBudgetGroups
from protrna.data.masking import IGNORE_INDEX
from protrna.data.streaming import FastaStream


def items(n=50, seed=0):
    rng = random.Random(seed)
    return [(f"r{i}", [33] * rng.randint(1, 120)) for i in range(n)]


def test_token_budget_is_kept_and_order_preserved():
    data = items() + [("huge", [34] * 400)]
    groups = list(TokenBudgetGroups(data, max_tokens=256))
    assert [name for g in groups for name, _ in g] == [name for name, _ in data]
    for group in groups:
        padded = len(group) * (max(len(ids) for _, ids in group) + 2)
        assert padded <= 256 or len(group) == 1  # an item alone over the budget is its own batch
    assert groups[-1] == [("huge", [34] * 400)]


def test_batch_size_groups():
    groups = list(TokenBudgetGroups(items(10), batch_size=4))
    assert [len(g) for g in groups] == [4, 4, 2]


def test_exactly_one_size_option():
    with pytest.raises(ValueError, match="exactly one"):
        TokenBudgetGroups(items(), max_tokens=10, batch_size=2)
    with pytest.raises(ValueError, match="exactly one"):
        TokenBudgetGroups(items())


def test_padding_layout():
    tokens = Alphabet().pad_batch([[33, 34, 35], [36]])
    assert tokens.tolist() == [[0, 33, 34, 35, 2], [0, 36, 2, 1, 1]]


def write_corpus(path, n=80, seed=0):
    rng = random.Random(seed)
    path.write_text(
        "".join(
            f">s{i}\n{''.join(rng.choice('ACGT') for _ in range(rng.randint(5, 90)))}\n" for i in range(n)
        )
    )
    return path


def test_mlm_batches_carry_counts(tmp_path):
    path = write_corpus(tmp_path / "c.fa")
    for batch in itertools.islice(MLMBatches(FastaStream([path]), max_tokens=300, seed=0), 10):
        assert batch["n_items"] == int(batch["labels"].ne(IGNORE_INDEX).sum()) > 0
        assert batch["n_tokens"] == int(batch["attention_mask"].sum())
        assert batch["input_ids"].numel() <= 300 or len(batch["input_ids"]) == 1


@pytest.mark.parametrize("stop", [0, 3, 11, 30])
def test_mlm_batches_resume_exactly(tmp_path, stop):
    path = write_corpus(tmp_path / "c.fa")
    make = lambda: MLMBatches(FastaStream([path], shuffle_buffer=7, seed=2), max_tokens=400, seed=9)  # noqa: E731
    reference = list(itertools.islice(make(), stop + 8))
    first = make()
    iterator = iter(first)
    for _ in range(stop):
        next(iterator)
    second = make()
    second.load_state_dict(first.state_dict())
    for expected, got in zip(reference[stop:], itertools.islice(second, 8)):
        assert torch.equal(expected["input_ids"], got["input_ids"])
        assert torch.equal(expected["labels"], got["labels"])
