"""Masked-language-model corruption of token batches, ESM-2 style.

Of the positions that may be predicted, 15 % are chosen; of those, 80 % become ``<mask>``, 10 %
a random nucleotide and 10 % stay as they are. The model is scored only on chosen positions:
``labels`` holds the original token there and ``-100`` (PyTorch's ``ignore_index``) everywhere
else.

Two choices the paper does not spell out, made here and kept in one place:

* Only the four canonical nucleotides ``a u g c`` are predicted, and only they replace tokens at
  random. ``x`` stands for "some unknown base" (N, IUPAC codes): asking the model to predict it,
  or planting it at random, would teach noise. ``x`` still appears, unmasked, as input.
* Every sequence gets at least one chosen position, so a batch of short RNAs never yields an
  empty loss. This raises the rate a little only for sequences shorter than about 7 nt.
"""

from __future__ import annotations

import torch

from ..alphabet import Alphabet

#: ``ignore_index`` of ``torch.nn.functional.cross_entropy``: positions the loss skips.
IGNORE_INDEX = -100


def nucleotide_ids(alphabet: Alphabet | None = None) -> torch.Tensor:
    """Ids of ``a u g c``: the tokens that are predicted and used as random replacements.

    >>> nucleotide_ids().tolist()
    [33, 34, 35, 36]
    """
    alphabet = alphabet or Alphabet()
    return torch.tensor([alphabet.get_idx(t) for t in "augc"], dtype=torch.long)


def mask_tokens(
    tokens: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    mask_prob: float = 0.15,
    mask_token_ratio: float = 0.8,
    random_token_ratio: float = 0.1,
    alphabet: Alphabet | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt ``tokens`` (B, T) for masked-LM training; returns ``(input_ids, labels)``.

    ``generator`` makes the corruption reproducible (the training loop saves its state in
    checkpoints). The input tensor is not modified.

    >>> tokens = Alphabet().get_batch_converter()(["ACGUACGUACGUACGUACGU"])
    >>> inputs, labels = mask_tokens(tokens, torch.Generator().manual_seed(0))
    >>> chosen = labels.ne(IGNORE_INDEX)
    >>> bool(chosen.any()), bool((labels[chosen] == tokens[chosen]).all())
    (True, True)
    >>> bool((inputs[~chosen] == tokens[~chosen]).all())
    True
    """
    if not 0 < mask_prob <= 1:
        raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob}")
    if mask_token_ratio < 0 or random_token_ratio < 0 or mask_token_ratio + random_token_ratio > 1:
        raise ValueError(
            f"mask_token_ratio {mask_token_ratio} + random_token_ratio {random_token_ratio} must "
            "be non-negative and sum to at most 1"
        )
    alphabet = alphabet or Alphabet()
    targets = nucleotide_ids(alphabet).to(tokens.device)
    eligible = torch.isin(tokens, targets)

    def uniform() -> torch.Tensor:
        # Drawn on the CPU so that a CPU generator drives GPU batches too.
        return torch.rand(tokens.shape, generator=generator).to(tokens.device)

    chosen = eligible & (uniform() < mask_prob)
    # At least one chosen position per sequence that has any eligible position: pick the
    # eligible position with the highest random score (one draw per position keeps it simple).
    missing = eligible.any(dim=1) & ~chosen.any(dim=1)
    if missing.any():
        score = uniform().masked_fill(~eligible, -1.0)
        forced = torch.zeros_like(chosen)
        forced[torch.arange(tokens.shape[0], device=tokens.device), score.argmax(dim=1)] = True
        chosen |= forced & missing[:, None]

    labels = torch.where(chosen, tokens, torch.full_like(tokens, IGNORE_INDEX))
    # One draw per position splits the chosen ones into <mask> / random / kept.
    split = uniform()
    to_mask = chosen & (split < mask_token_ratio)
    to_random = chosen & (split >= mask_token_ratio) & (split < mask_token_ratio + random_token_ratio)
    random_tokens = targets[torch.randint(len(targets), tokens.shape, generator=generator).to(tokens.device)]

    inputs = tokens.clone()
    inputs[to_mask] = alphabet.mask_idx
    inputs[to_random] = random_tokens[to_random]
    return inputs, labels
