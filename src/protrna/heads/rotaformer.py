"""The RotaFormer structure head's maths, in plain PyTorch: an AlphaFold2-style Evoformer pair stack.

ProtRNA predicts base pairs from the language model's per-nucleotide representations with an
Evoformer over a single "MSA" row (the LM embedding of the one sequence) and a pair track, then a
5x5 convolution to one logit per pair. Despite the name there is no rotary embedding in it.

Every module here is the original TensorFlow head's maths, written to be read: whole tensors,
out-of-place residual adds, autograd everywhere. :meth:`RotaFormerHead.pair_logits` runs it as
written when gradients are on (training), and hands it to :mod:`protrna.execution` when they are
off, which computes the same numbers a chunk of rows at a time, in place, on worker threads
(``tests/heads/test_execution.py`` holds the two paths together, update by update).

Numerics in both paths: the residual streams ``m`` and ``z`` stay float32; the compute dtype is
that of the parameters (``head.to(torch.bfloat16)``), with LayerNorm statistics and the attention
softmax in float32, so that 72 residual updates do not pile up bfloat16 rounding.

Shapes: B sequences, L nucleotides, D the LM width (1280), S the single width (256), P the pair
width (128), H heads of width W.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import execution

# A masked key gets this logit: finite, so no row can turn into NaN, and far enough below any
# real logit that its softmax weight is exactly zero in float32 and bfloat16.
MASKED = -1e9


def masked_value(dtype: torch.dtype) -> float:
    """The logit of a masked key in ``dtype`` (float16 cannot hold :data:`MASKED`; its most
    negative value masks as well)."""
    return max(MASKED, torch.finfo(dtype).min)


@dataclasses.dataclass
class RotaFormerConfig:
    """Shape of a RotaFormer head; the defaults are the released ``ssHead_RF_bprna``.

    Args:
        input_dim: width of the language-model representation fed in (1280 for ProtRNA).
        single_dim: width of the single ("MSA") row (256).
        pair_dim: width of the pair track (128).
        num_blocks: Evoformer blocks (12 = 3 groups of 4 in the original).
        msa_heads: heads of the row attention with pair bias (8).
        pair_heads: heads of each triangle attention (4).
        head_width: channels per attention head (32).
        outer_dim: channels of each side of the outer product mean (32).
        transition_factor: widening of both transitions (4).
        max_relative_distance: relative positions are clipped to +-this before the one-hot (32).
        conv_kernel: size of the square output convolution (5, "SAME" padding).
        threshold: probability above which a pair is predicted; train-ss picks it on validation
            data (0.25 for the released head, chosen on bpRNA VL0).
    """

    input_dim: int = 1280
    single_dim: int = 256
    pair_dim: int = 128
    num_blocks: int = 12
    msa_heads: int = 8
    pair_heads: int = 4
    head_width: int = 32
    outer_dim: int = 32
    transition_factor: int = 4
    max_relative_distance: int = 32
    conv_kernel: int = 5
    threshold: float = 0.25

    def __post_init__(self) -> None:
        if self.conv_kernel % 2 != 1:
            raise ValueError(f"conv_kernel must be odd for 'SAME' padding, got {self.conv_kernel}")


def layer_norm(norm: nn.LayerNorm, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``norm(x)`` with float32 statistics and parameters, the result in the compute ``dtype``."""
    return F.layer_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps).to(dtype)


def pair_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, L) mask of real nucleotides => (B, L, L) mask of real pairs."""
    return None if mask is None else mask[:, :, None] & mask[:, None, :]


class GatedAttention(nn.Module):
    """Multi-head attention with an additive bias and a sigmoid gate on every head's output.

    Keras stores ``query_w``/``key_w``/``value_w``/``gating_w`` as (in, heads, width) and
    ``output_w`` as (heads, width, out); here they are ``nn.Linear`` layers over the flattened
    heads. Queries are scaled by width**-0.5 as in the original.

    >>> attention = GatedAttention(16, heads=2, head_width=4, out_dim=16)
    >>> attention(torch.randn(3, 5, 16), torch.zeros(1, 2, 5, 5)).shape
    torch.Size([3, 5, 16])
    """

    def __init__(self, dim: int, heads: int, head_width: int, out_dim: int):
        super().__init__()
        self.heads, self.head_width = heads, head_width
        inner = heads * head_width
        self.query = nn.Linear(dim, inner, bias=False)
        self.key = nn.Linear(dim, inner, bias=False)
        self.value = nn.Linear(dim, inner, bias=False)
        self.gate = nn.Linear(dim, inner)
        self.output = nn.Linear(inner, out_dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``x`` (N, L, dim) attends over its own L positions; ``bias`` (1 or N, H, L, L)."""
        H, W = self.heads, self.head_width
        q, k, v = (layer(x).unflatten(-1, (H, W)).transpose(1, 2) for layer in (self.query, self.key, self.value))
        # softmax(q k^T / sqrt(W) + bias) v: (N, H, L, W)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=W**-0.5)
        out = out.transpose(1, 2).flatten(-2)  # (N, L, H * W)
        return self.output(out * torch.sigmoid(self.gate(x)))


class RowAttentionWithPairBias(nn.Module):
    """Self-attention along the single row, biased by a projection of the pair track."""

    def __init__(self, config: RotaFormerConfig):
        super().__init__()
        c = config
        self.norm = nn.LayerNorm(c.single_dim, eps=1e-5)  # query_norm
        self.pair_norm = nn.LayerNorm(c.pair_dim, eps=1e-5)  # feat_2d_norm
        self.pair_bias = nn.Linear(c.pair_dim, c.msa_heads, bias=False)  # feat_2d_weights
        self.attention = GatedAttention(c.single_dim, c.msa_heads, c.head_width, c.single_dim)

    def forward(self, m: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The update of ``m`` (B, L, S) from ``m`` and ``z`` (B, L, L, P)."""
        dtype = self.pair_bias.weight.dtype
        bias = self.pair_bias(layer_norm(self.pair_norm, z, dtype)).permute(0, 3, 1, 2)  # (B, H, L, L)
        if mask is not None:  # padded keys
            bias = bias.masked_fill(~mask[:, None, None, :], masked_value(dtype))
        return self.attention(layer_norm(self.norm, m, dtype), bias)


class Transition(nn.Module):
    """LayerNorm, Linear to ``factor * dim``, ReLU, Linear back: a position-wise feed-forward."""

    def __init__(self, dim: int, factor: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.expand = nn.Linear(dim, factor * dim)
        self.contract = nn.Linear(factor * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The update of ``x`` (any leading shape, ``dim`` channels last)."""
        return self.contract(torch.relu(self.expand(layer_norm(self.norm, x, self.expand.weight.dtype))))


class OuterProductMean(nn.Module):
    """Pair update from the single row: ``out[i, j] = sum_ce l[i, c] r[j, e] W[c, e, :] + b``.

    With one row the "mean" divides by 1 + 1e-3 (the original's ``n_rows + 1e-3``).
    """

    def __init__(self, config: RotaFormerConfig):
        super().__init__()
        c = config
        self.outer_dim = c.outer_dim
        self.norm = nn.LayerNorm(c.single_dim, eps=1e-5)  # layer_norm_input
        self.left = nn.Linear(c.single_dim, c.outer_dim)  # left_projection
        self.right = nn.Linear(c.single_dim, c.outer_dim)  # right_projection
        # Input index c * outer_dim + e: ``output_w`` (outer, outer, pair) flattened.
        self.output = nn.Linear(c.outer_dim * c.outer_dim, c.pair_dim)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        """The update of ``z`` (B, L, L, P) from ``m`` (B, L, S)."""
        n, P = self.outer_dim, self.output.out_features
        x = layer_norm(self.norm, m, self.left.weight.dtype)
        left, right = self.left(x), self.right(x)  # (B, L, n) each
        weight = self.output.weight.view(P, n, n)  # (f, c, e)
        # Contracted as left @ (right W), which never forms the (B, L, L, n, n) outer product.
        right_w = torch.einsum("bje,fce->bjcf", right, weight)  # (B, L, n, P)
        out = torch.einsum("bic,bjcf->bijf", left, right_w) + self.output.bias  # (B, L, L, P)
        return out / (1 + 1e-3)  # one row: the mean divides by n_rows + 1e-3


class TriangleMultiplication(nn.Module):
    """Triangle update of the pair track with gated projections.

    Outgoing: ``out[i, j] = sum_k a[i, k] * b[j, k]``; incoming (``incoming=True``):
    ``out[i, j] = sum_k a[k, j] * b[k, i]``; with ``a = left(x) * sigmoid(left_gate(x))``, ``b``
    likewise, x the normalised track, padded pairs zeroed. Then the centre LayerNorm, the output
    projection and a sigmoid gate from x.
    """

    def __init__(self, dim: int, incoming: bool):
        super().__init__()
        self.incoming = incoming
        self.norm = nn.LayerNorm(dim, eps=1e-5)  # layer_norm_input
        self.left = nn.Linear(dim, dim)  # left_projection
        self.right = nn.Linear(dim, dim)  # right_projection
        self.left_gate = nn.Linear(dim, dim)
        self.right_gate = nn.Linear(dim, dim)
        self.center_norm = nn.LayerNorm(dim, eps=1e-5)  # center_layer_norm
        self.output = nn.Linear(dim, dim)  # output_projection
        self.gate = nn.Linear(dim, dim)  # gating_linear

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The update of ``z`` (B, L, L, P)."""
        dtype = self.left.weight.dtype
        x = layer_norm(self.norm, z, dtype)
        a = self.left(x) * torch.sigmoid(self.left_gate(x))  # (B, L, L, P)
        b = self.right(x) * torch.sigmoid(self.right_gate(x))
        pairs = pair_mask(mask)
        if pairs is not None:
            a, b = a.masked_fill(~pairs[..., None], 0.0), b.masked_fill(~pairs[..., None], 0.0)
        if self.incoming:
            product = torch.einsum("bkjc,bkic->bijc", a, b)
        else:
            product = torch.einsum("bikc,bjkc->bijc", a, b)
        return self.output(layer_norm(self.center_norm, product, dtype)) * torch.sigmoid(self.gate(x))


class TriangleAttention(nn.Module):
    """Gated attention along the rows of the pair track, biased by the track itself.

    Starting node: in row ``i``, ``j`` attends over ``k`` with logit ``q_ij . k_ik +
    bias[h, j, k]``; the bias, a projection of the normalised track, is the same for every row.
    Ending node (``ending=True``) is the same on the transposed track.
    """

    def __init__(self, config: RotaFormerConfig, ending: bool):
        super().__init__()
        c = config
        self.ending = ending
        self.norm = nn.LayerNorm(c.pair_dim, eps=1e-5)  # query_norm
        self.pair_bias = nn.Linear(c.pair_dim, c.pair_heads, bias=False)  # feat_2d_weights
        self.attention = GatedAttention(c.pair_dim, c.pair_heads, c.head_width, c.pair_dim)

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The update of ``z`` (B, L, L, P)."""
        track = z.transpose(1, 2) if self.ending else z
        x = layer_norm(self.norm, track, self.pair_bias.weight.dtype)
        bias = self.pair_bias(x).permute(0, 3, 1, 2)  # (B, H, L, L): bias[b, h, j, k]
        if mask is not None:  # padded keys
            bias = bias.masked_fill(~mask[:, None, None, :], masked_value(bias.dtype))
        # Each row i of a sequence is one attention over its L positions, with its sequence's bias.
        out = torch.stack([self.attention(x[b], bias[b, None]) for b in range(len(x))])  # (B, L, L, P)
        return out.transpose(1, 2) if self.ending else out


class EvoformerBlock(nn.Module):
    """One Evoformer iteration: two single-row updates, then six pair updates, all residual."""

    def __init__(self, config: RotaFormerConfig):
        super().__init__()
        c = config
        self.row_attention = RowAttentionWithPairBias(c)
        self.single_transition = Transition(c.single_dim, c.transition_factor)
        self.outer_product_mean = OuterProductMean(c)
        self.triangle_multiplication_outgoing = TriangleMultiplication(c.pair_dim, incoming=False)
        self.triangle_multiplication_incoming = TriangleMultiplication(c.pair_dim, incoming=True)
        self.triangle_attention_starting = TriangleAttention(c, ending=False)
        self.triangle_attention_ending = TriangleAttention(c, ending=True)
        self.pair_transition = Transition(c.pair_dim, c.transition_factor)

    def forward(
        self, m: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``m`` (B, L, S) and ``z`` (B, L, L, P), float32, => their updated values."""
        m = m + self.row_attention(m, z, mask)
        m = m + self.single_transition(m)
        z = z + self.outer_product_mean(m)
        z = z + self.triangle_multiplication_outgoing(z, mask)
        z = z + self.triangle_multiplication_incoming(z, mask)
        z = z + self.triangle_attention_starting(z, mask)
        z = z + self.triangle_attention_ending(z, mask)
        z = z + self.pair_transition(z)
        return m, z


class Embedding(nn.Module):
    """LM representation (B, L, D) => single row (B, L, S) and pair track (B, L, L, P):
    ``z[i, j] = left(x_i) + right(x_j) + relpos(one_hot(clip(i - j, -d, d) + d))``."""

    def __init__(self, config: RotaFormerConfig):
        super().__init__()
        c = config
        self.max_relative_distance = c.max_relative_distance
        self.single = nn.Linear(c.input_dim, c.single_dim)  # preprocess_1d
        self.left = nn.Linear(c.input_dim, c.pair_dim)  # left_single
        self.right = nn.Linear(c.input_dim, c.pair_dim)  # right_single
        self.relative_position = nn.Linear(2 * c.max_relative_distance + 1, c.pair_dim)  # pair_activiations

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d, L = self.max_relative_distance, x.shape[1]
        m = self.single(x).float()
        left, right = self.left(x).float(), self.right(x).float()  # (B, L, P) each
        position = torch.arange(L, device=x.device)
        offset = (position[:, None] - position[None, :]).clamp(-d, d) + d  # (L, L)
        relative = self.relative_position(F.one_hot(offset, 2 * d + 1).to(x.dtype)).float()  # (L, L, P)
        z = left[:, :, None] + right[:, None, :] + relative
        return m, z


class RotaFormerHead(nn.Module):
    """Nucleotide representations => symmetric base-pair logits: embedding, Evoformer blocks,
    output convolution.

    >>> head = RotaFormerHead(RotaFormerConfig(input_dim=8, num_blocks=1)).eval()
    >>> x, mask = torch.randn(2, 5, 8), torch.arange(5) < torch.tensor([[5], [3]])  # (B, L, D), (B, L)
    >>> with torch.inference_mode():
    ...     logits = head.pair_logits(x, mask)
    >>> logits.shape, bool(logits[1, 3:].any()), torch.equal(logits, logits.transpose(1, 2))
    (torch.Size([2, 5, 5]), False, True)

    ``head.gradient_checkpointing = True`` keeps only each block's input for the backward pass.
    ``head.chunk_threads`` sets the CPU inference threads (see :func:`protrna.execution.pair_logits`).
    """

    def __init__(self, config: RotaFormerConfig | None = None):
        super().__init__()
        self.config = config = config or RotaFormerConfig()
        self.embedding = Embedding(config)
        self.blocks = nn.ModuleList(EvoformerBlock(config) for _ in range(config.num_blocks))
        k = config.conv_kernel
        self.conv = nn.Conv2d(config.pair_dim, 1, kernel_size=k, padding=k // 2)
        self.gradient_checkpointing = False
        self.chunk_threads: int | None = None

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (that of the parameters); the residual streams are float32."""
        return self.conv.weight.dtype

    def pair_logits(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, *, chunk_size: int | None = None
    ) -> torch.Tensor:
        """Pair logits (B, L, L) for nucleotide representations ``x`` (B, L, D), without BOS/EOS.

        ``mask`` (B, L) bool marks real nucleotides (None: all are); the logits are zero outside
        each sequence, and a padded sequence gets the logits it gets alone. Predicted pairs:
        ``sigmoid(logits) > head.config.threshold``. With gradients off (``torch.inference_mode()``)
        this runs :func:`protrna.execution.pair_logits`, in place and chunked; ``chunk_size``
        (rows of a pair track at once, None: automatic) bounds its memory, not its results. With
        gradients on it runs :meth:`plain_pair_logits`.
        """
        if x.dim() != 3 or x.shape[-1] != self.config.input_dim:
            raise ValueError(f"x must be (batch, nucleotides, {self.config.input_dim}), got shape {tuple(x.shape)}")
        if x.shape[1] < 1:
            raise ValueError("x has no nucleotides")
        if mask is not None:
            if mask.shape != x.shape[:2] or mask.dtype != torch.bool:
                raise ValueError(f"mask must be bool {tuple(x.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}")
            if not bool(mask.any(dim=1).all()):
                raise ValueError("mask leaves a sequence without nucleotides")
            mask = None if bool(mask.all()) else mask.to(x.device)
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1 (or None: automatic), not {chunk_size}")
        x = x.to(self.dtype)
        if mask is not None:
            x = x.masked_fill(~mask[..., None], 0.0)  # padding never enters
        if torch.is_grad_enabled():
            return self.plain_pair_logits(x, mask)
        return execution.pair_logits(self, x, mask, chunk_size=chunk_size)

    def plain_pair_logits(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`pair_logits` as the maths reads, autograd-safe: ``x`` (B, L, D) in the compute
        dtype, ``mask`` (B, L) or None."""
        m, z = self.embedding(x)  # (B, L, S), (B, L, L, P)
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                m, z = checkpoint(block, m, z, mask, use_reentrant=False)
            else:
                m, z = block(m, z, mask)
        return self.output_logits(z, mask)

    def output_logits(self, z: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Pair track (B, L, L, P) => symmetric logits (B, L, L), zero outside each sequence."""
        pairs = pair_mask(mask)
        if pairs is not None:  # the original's convolution sees zeros past the sequence's border
            z = z.masked_fill(~pairs[..., None], 0.0)
        # (B, L, L, P) => (B, P, L, L): a channels-last view, which conv2d takes as it is.
        with execution.full_float32_convolutions(z.device, self.dtype):
            logits = self.conv(z.permute(0, 3, 1, 2).to(self.dtype))[:, 0].float()
        logits = 0.5 * (logits + logits.transpose(1, 2))
        return logits if pairs is None else logits.masked_fill(~pairs, 0.0)
