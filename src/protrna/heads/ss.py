"""The RotaFormer secondary-structure head (``ssHead_RF_bprna``) with the original's calling
conventions.

The maths is :mod:`protrna.heads.rotaformer` (``pair_logits(x, mask)``: nucleotides only, always
(B, L, L)); how it runs fast is :mod:`protrna.execution`. This module adds what the original's
``ss_model(reps)`` users expect: representations *with* the empty BOS and EOS slots, lengths
instead of a mask, and (L, L) logits for a batch of one, plus saving and loading.
"""

from __future__ import annotations

import torch

from .rotaformer import (  # noqa: F401 - re-exported: the head's parts are imported from here too
    MASKED,
    Embedding,
    EvoformerBlock,
    GatedAttention,
    OuterProductMean,
    RotaFormerConfig,
    RotaFormerHead,
    RowAttentionWithPairBias,
    Transition,
    TriangleAttention,
    TriangleMultiplication,
)
from .saving import SavedHead

#: ``config.json`` marker that tells a head directory from a language-model directory.
MODEL_TYPE = "protrna-rotaformer"


class RotaFormer(RotaFormerHead, SavedHead):
    """ProtRNA's secondary-structure head: LM representations => base-pair logits.

    >>> head = RotaFormer(RotaFormerConfig(input_dim=8, num_blocks=1)).eval()
    >>> reps = torch.randn(2, 7, 8)  # (B, T, input_dim), BOS and EOS included
    >>> with torch.inference_mode():
    ...     logits = head(reps, lengths=torch.tensor([5, 3]))
    >>> logits.shape, bool(logits[1, 3:].any()), torch.equal(logits, logits.transpose(1, 2))
    (torch.Size([2, 5, 5]), False, True)

    ``forward`` takes the LM's ``representations[33]`` *with* BOS and EOS, (B, T, input_dim),
    and the nucleotide count of each row (``None``: every row is full, ``T - 2``), and returns
    symmetric pair logits (B, L, L) with L = T - 2, zero outside each sequence, or (L, L) when
    B == 1, as the original. Predicted pairs: ``sigmoid(logits) > head.config.threshold``.
    Without BOS/EOS and with a mask, call :meth:`pair_logits` (always (B, L, L)).
    Run inference under ``torch.inference_mode()`` (the pair track is then updated in place).
    For training, ``head.gradient_checkpointing = True`` keeps only each block's input for the
    backward pass.

    CPU inference runs chunks of rows on ``head.chunk_threads`` threads, each op
    single-threaded; 1 leaves threading to PyTorch. None (the default): PyTorch's
    ``torch.get_num_threads()`` chunk threads for L >= 96 (176 without the fused kernels),
    PyTorch's own threading below.
    """

    model_type = MODEL_TYPE
    config_class = RotaFormerConfig
    description = "RotaFormer head"

    def forward(
        self,
        representations: torch.Tensor,
        lengths: torch.Tensor | None = None,
        *,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Pair logits (B, L, L), or (L, L) for a batch of one; see the class docstring.

        ``chunk_size``: rows of a pair track processed at once (None: from L, see
        :func:`protrna.execution.auto_chunk_size`). Smaller needs less memory; the logits do not
        depend on it.
        """
        if representations.dim() != 3 or representations.shape[-1] != self.config.input_dim:
            raise ValueError(
                f"representations must be (batch, tokens, {self.config.input_dim}) with BOS and EOS, "
                f"got shape {tuple(representations.shape)}"
            )
        B, T, _ = representations.shape
        L = T - 2
        if L < 1:
            raise ValueError(f"representations have {T} tokens: nothing between BOS and EOS")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1 (or None: automatic), not {chunk_size}")
        mask = _mask(lengths, B, L, representations.device)
        logits = self.pair_logits(representations[:, 1:-1], mask, chunk_size=chunk_size)  # BOS and EOS off
        return logits[0] if B == 1 else logits


def _mask(lengths: torch.Tensor | None, B: int, L: int, device: torch.device) -> torch.Tensor | None:
    """(B, L) bool of real nucleotides, or None when no row is padded."""
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.dim() > 1 or lengths.is_floating_point() and bool((lengths != lengths.round()).any()):
        raise ValueError(f"lengths must be B whole numbers, got {lengths.tolist()}")
    lengths = lengths.long().reshape(-1)
    if lengths.numel() != B:
        raise ValueError(f"lengths has {lengths.numel()} entries for a batch of {B}")
    if bool((lengths < 1).any()) or bool((lengths > L).any()):
        raise ValueError(f"lengths must lie in 1..{L} (tokens - 2), got {lengths.tolist()}")
    if bool((lengths == L).all()):
        return None
    return torch.arange(L, device=device)[None, :] < lengths[:, None]
