import pytest
import torch

from protrna.alphabet import Alphabet
from protrna.alphabet import Alphabet
from protrna.data.masking import IGNORE_INDEX, mask_tokens, nucleotide_ids

ALPHABET = Alphabet()
NUCLEOTIDES = set(nucleotide_ids().tolist())


def random_batch(n: int = 64, length: int = 500, seed: int = 0) -> torch.Tensor:
    """Padded batch of random RNAs of varied length, with some unknown bases (x)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        size = length - 3 * i
        ids = torch.tensor(sorted(NUCLEOTIDES))[torch.randint(4, (size,), generator=g)]
        ids[torch.rand(size, generator=g) < 0.02] = ALPHABET.get_idx("x")
        rows.append(ids.tolist())
    return Alphabet().pad_batch(rows)


def test_rates_match_esm_masking():
    tokens = random_batch()
    inputs, labels = mask_tokens(tokens, torch.Generator().manual_seed(1))
    eligible = torch.isin(tokens, nucleotide_ids())
    chosen = labels.ne(IGNORE_INDEX)
    n_eligible, n_chosen = int(eligible.sum()), int(chosen.sum())
    assert n_eligible > 20_000
    # 15 % of the nucleotides; the binomial standard deviation is ~0.2 %, so 1 % is 5 sigma.
    assert abs(n_chosen / n_eligible - 0.15) < 0.01
    masked = (inputs[chosen] == ALPHABET.mask_idx).float().mean().item()
    # A random replacement may draw the original letter (1 in 4): 10 % * 3/4 look changed, and
    # 10 % + 10 % * 1/4 look kept.
    changed = (
        ((inputs[chosen] != tokens[chosen]) & (inputs[chosen] != ALPHABET.mask_idx)).float().mean().item()
    )
    kept = (inputs[chosen] == tokens[chosen]).float().mean().item()
    assert abs(masked - 0.80) < 0.03
    assert abs(changed - 0.075) < 0.02
    assert abs(kept - 0.125) < 0.02


def test_labels_and_untouched_positions():
    tokens = random_batch(n=16, length=200)
    inputs, labels = mask_tokens(tokens, torch.Generator().manual_seed(2))
    chosen = labels.ne(IGNORE_INDEX)
    assert torch.equal(labels[chosen], tokens[chosen])
    assert torch.equal(inputs[~chosen], tokens[~chosen])
    # Only a, u, g, c are ever scored: never <cls>, <eos>, <pad> or the unknown base x.
    assert set(tokens[chosen].tolist()) <= NUCLEOTIDES
    # Replacements are <mask> or a nucleotide, never a protein or special token.
    assert set(inputs[chosen].tolist()) <= NUCLEOTIDES | {ALPHABET.mask_idx}


def test_every_sequence_gets_a_target_and_input_is_not_modified():
    tokens = Alphabet().pad_batch([[33], [34, 35], [36, 37, 33], [37, 37]])  # last: only x, nothing to score
    before = tokens.clone()
    for seed in range(20):
        _, labels = mask_tokens(tokens, torch.Generator().manual_seed(seed))
        counts = labels.ne(IGNORE_INDEX).sum(dim=1).tolist()
        assert all(c >= 1 for c in counts[:3]) and counts[3] == 0
    assert torch.equal(tokens, before)


def test_same_generator_state_gives_same_masks():
    tokens = random_batch(n=4, length=100)
    a = mask_tokens(tokens, torch.Generator().manual_seed(5))
    b = mask_tokens(tokens, torch.Generator().manual_seed(5))
    c = mask_tokens(tokens, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize(
    "kwargs", [{"mask_prob": 0.0}, {"mask_prob": 1.5}, {"mask_token_ratio": 0.95, "random_token_ratio": 0.1}]
)
def test_bad_ratios_are_refused(kwargs):
    with pytest.raises(ValueError):
        mask_tokens(random_batch(n=1, length=10), **kwargs)
