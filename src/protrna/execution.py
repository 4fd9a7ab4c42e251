"""How the RotaFormer head runs with gradients off: the same maths as
:mod:`protrna.heads.rotaformer`, organised for speed and memory.

* The pair track ``z`` (L, L, 128) of each sequence is updated a chunk of rows at a time, in
  place, so the big intermediates (attention logits, triangle operands, the 512-wide transition)
  exist for a few rows only and mostly stay in the CPU caches.
* The incoming triangle multiplication and the ending-node attention are the outgoing and
  starting-node ones applied to the transposed track, a view, so each exists once.
* CPU attention runs per head on contiguous q, k, v (one small projection each), a few rows at a
  time; the pair bias is one (L, L) matrix per head shared by every row, and the softmax is taken
  into float32. Off the CPU all heads and rows of a chunk go to one fused
  ``scaled_dot_product_attention``, and chunks are 8x larger: on the lent H200 the CPU-shaped path
  was bound by kernel launches (2 blocks at L = 300: 81 ms of CPU time for 32 ms of GPU work).
* The outer product mean is factored as ``left @ (right W)`` and never forms (L, L, 32, 32).
* CPU inference runs chunks on worker threads, each op single-threaded (:func:`chunk_threads`),
  sends linear layers to oneDNN (:func:`linear`) and float32 batched matmuls to oneDNN where that
  stays exact (:func:`onednn_float32_matmuls`), and keeps freed memory in the allocator while it
  runs (:func:`protrna.cpu.keep_freed_memory`).
* In float32 on CUDA the output convolution is kept out of TF32 (cuDNN's default), whose 10-bit
  mantissa moved the parity fixture's logits by 8e-3 (:func:`full_float32_convolutions`).
* Batches: each sequence's track is updated on its own; padded keys are masked in every attention
  and padded pairs are zeroed in the triangle operands. Padding costs as much as real positions.

Nothing here changes a global setting at import: the CPU probes run on first use, and every
setting changed for a forward pass is restored when it ends. ``benchmarks/bench_ss_head.py``
measures the result.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .cpu import keep_freed_memory, onednn_supports

if TYPE_CHECKING:
    from .heads import rotaformer as rf

# Automatic row chunks hold about this many pair entries (rows x L x channels); see
# ``benchmarks/bench_ss_head.py --chunk-size`` for the trade-off between speed and memory.
# On GPUs larger chunks mean fewer kernel launches; a chunk's intermediates are then a few
# hundred MB.
_CHUNK_ELEMENTS = 1 << 22
_CHUNK_ELEMENTS_GPU = 1 << 25

# The pair transition works on at most this many positions at once.
_TRANSITION_POSITIONS = 4096

# Attention logits are formed for at most this many entries (rows x L x L) at once, per head.
_LOGITS_ELEMENTS = 1 << 19

#: Attention through ``F.scaled_dot_product_attention`` on CPU too (see :func:`attend` for why it
#: is not the CPU default); off the CPU it is always used. Tests switch it on to compare the paths.
SDPA_ON_CPU = False

# Shorter RNAs leave CPU threading to PyTorch's intra-op threads by default: their ops are too
# small for chunk threads to pay off. On the reference 2-core CPU (12 blocks) intra-op threads
# took 0.12 / 0.39 / 1.07 s in bf16 at L = 50 / 100 / 150, chunk threads 0.25 / 0.47 / 1.10 s
# (fp32 at L = 50 and 150: 0.17 / 1.64 s against 0.26 / 1.75 s). From L = 200 the two were within
# the run-to-run noise (+-10 %), and chunk threads degrade less when another process holds a core.
CHUNK_THREADS_MIN_LENGTH = 176
# With the fused kernels (protrna.kernels) the non-matrix work runs on the chunk threads with the
# GIL released, but on one core when PyTorch threads the rest: chunk threads pay off sooner. On
# the 2-core AVX2 CPU in float32 (12 blocks, best of 3, two rounds; BENCHMARKS.md) chunk threads
# took 0.53-0.57 / 1.43-1.46 / 3.4-4.3 s at L = 50 / 100 / 150, intra-op threads 0.42-0.46 /
# 1.50-1.55 / 4.3-5.3 s.
CHUNK_THREADS_MIN_LENGTH_FUSED = 96


# ---- the whole head ----------------------------------------------------------------------------


def pair_logits(
    head: rf.RotaFormerHead, x: torch.Tensor, mask: torch.Tensor | None, *, chunk_size: int | None = None
) -> torch.Tensor:
    """:meth:`~protrna.heads.rotaformer.RotaFormerHead.plain_pair_logits`, fast, gradients off.

    ``x`` (B, L, D) in the head's dtype, ``mask`` (B, L) or None. CPU inference runs chunks of
    rows on ``head.chunk_threads`` threads, each op single-threaded; 1 leaves threading to
    PyTorch. None (the default): ``torch.get_num_threads()`` chunk threads for
    L >= :data:`CHUNK_THREADS_MIN_LENGTH_FUSED` with the fused kernels (else
    :data:`CHUNK_THREADS_MIN_LENGTH`), PyTorch's own threading below.
    """
    if torch.is_grad_enabled():
        raise RuntimeError("the fast path updates tensors in place: call it under torch.inference_mode()")
    L = x.shape[1]
    on_cpu = x.device.type == "cpu"
    threads = 1
    if on_cpu:
        # built (once) or found here, not by the first chunk thread to need it
        shortest = CHUNK_THREADS_MIN_LENGTH_FUSED if kernels.available() else CHUNK_THREADS_MIN_LENGTH
        threads = head.chunk_threads or (torch.get_num_threads() if L >= shortest else 1)
    chunk_size = chunk_size or auto_chunk_size(L, head.config.pair_dim, threads, gpu=not on_cpu)
    with keep_freed_memory() if on_cpu else contextlib.nullcontext():
        with cpu_inference(threads, head.dtype) if on_cpu else contextlib.nullcontext():
            m, z = embedding(head.embedding, x, chunk_size)
            for block in head.blocks:
                m, z = evoformer_block(block, m, z, mask, chunk_size)
        return head.output_logits(z, mask)  # one convolution: PyTorch's own threads do it best


def evoformer_block(
    block: rf.EvoformerBlock, m: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``block(m, z, mask)``, ``z`` (B, L, L, P) updated in place."""
    m = m + row_attention(block.row_attention, m, z, mask, chunk_size)
    m = m + transition(block.single_transition, m)
    z = outer_product_mean(block.outer_product_mean, m, z, chunk_size)
    z = triangle_multiplication(block.triangle_multiplication_outgoing, z, mask, chunk_size)
    z = triangle_multiplication(block.triangle_multiplication_incoming, z, mask, chunk_size)
    z = triangle_attention(block.triangle_attention_starting, z, mask, chunk_size)
    z = triangle_attention(block.triangle_attention_ending, z, mask, chunk_size)
    z = pair_transition(block.pair_transition, z, chunk_size)
    return m, z


# ---- the Evoformer updates ---------------------------------------------------------------------


def embedding(module: rf.Embedding, x: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``module(x)``: the pair track built a chunk of rows at a time."""
    L = x.shape[1]
    m = linear(x, module.single.weight, module.single.bias).float()
    left = linear(x, module.left.weight, module.left.bias).float()
    right = linear(x, module.right.weight, module.right.bias).float()
    d = module.max_relative_distance
    position = torch.arange(L, device=x.device)
    offset = (position[:, None] - position[None, :]).clamp(-d, d) + d  # (L, L)
    # A linear layer applied to a one-hot vector is a row of its weight plus the bias.
    table = (module.relative_position.weight.T + module.relative_position.bias).float()  # (2d + 1, P)
    z = by_rows(L, chunk_size, lambda rows: table[offset[rows]] + left[:, rows, None] + right[:, None], dim=1)
    return m, z


def row_attention(
    module: rf.RowAttentionWithPairBias, m: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None, chunk_size: int
) -> torch.Tensor:
    """``module(m, z, mask)``: the update of ``m`` (B, L, S), in the compute dtype."""
    dtype = module.pair_bias.weight.dtype
    biases = []
    for b, track in enumerate(z):  # the normalised track is used once: never stored whole
        normed_rows = lambda rows, track=track: _norm(module.pair_norm, track[rows], dtype)  # noqa: E731
        biases.append(_pair_bias(normed_rows, track.shape[0], module.pair_bias, None if mask is None else mask[b],
                                 chunk_size))  # fmt: skip
    return gated_attention(module.attention, _norm(module.norm, m, dtype), torch.stack(biases))


def transition(module: rf.Transition, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, in the compute dtype."""
    x = _norm(module.norm, x, module.expand.weight.dtype)
    hidden = linear(x, module.expand.weight, module.expand.bias, activation="relu")
    return linear(hidden, module.contract.weight, module.contract.bias)


def pair_transition(module: rf.Transition, z: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``z + module(z)`` for ``z`` (B, L, L, P), in place, a chunk of rows at a time."""
    rows_of_all_tracks = z.flatten(0, 1)  # positions are independent
    # Fewer rows than elsewhere: the 4x wider hidden layer should stay in the CPU caches.
    if z.device.type == "cpu":
        chunk_size = min(chunk_size, max(1, _TRANSITION_POSITIONS // z.shape[2]))
    update_rows(rows_of_all_tracks, chunk_size, lambda rows: transition(module, rows_of_all_tracks[rows]))
    return z


def outer_product_mean(module: rf.OuterProductMean, m: torch.Tensor, z: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``z + module(m)``, in place: ``left @ (right W)``, one matmul per chunk of rows."""
    dtype = module.left.weight.dtype
    n, P = module.outer_dim, module.output.out_features
    scale = 1.0 / (1.0 + 1e-3)  # one row: the mean divides by n_rows + 1e-3
    x = _norm(module.norm, m, dtype)
    left = linear(x, module.left.weight * scale, module.left.bias * scale)  # (B, L, n)
    right = linear(x, module.right.weight, module.right.bias)
    weight = module.output.weight.view(P, n, n)  # (f, c, e)
    bias = module.output.bias * scale
    for b, track in enumerate(z):
        L = track.shape[0]
        # (r W)[c, j, f] = sum_e r[j, e] W[c, e, f], as (c, j * f): one matmul per chunk.
        right_w = torch.einsum("je,fce->cjf", right[b], weight).reshape(n, L * P)
        update_rows(track, chunk_size, lambda rows, b=b, L=L, rw=right_w: (left[b, rows] @ rw).view(-1, L, P) + bias)
    return z


def triangle_multiplication(
    module: rf.TriangleMultiplication, z: torch.Tensor, mask: torch.Tensor | None, chunk_size: int
) -> torch.Tensor:
    """``z + module(z, mask)``, in place, one sequence and a chunk of rows at a time."""
    for b, track in enumerate(z):
        _triangle_multiplication(module, track, None if mask is None else mask[b], chunk_size)
    return z


def _triangle_multiplication(
    module: rf.TriangleMultiplication, track: torch.Tensor, mask: torch.Tensor | None, chunk_size: int
) -> None:
    dtype = module.left.weight.dtype
    view = track.transpose(0, 1) if module.incoming else track
    L, C = view.shape[0], view.shape[2]
    pairs = None if mask is None else mask[:, None] & mask[None, :]
    chunks = list(_chunks(L, chunk_size))
    # Each operand's projection and gate as one linear layer: [value | gate] per position.
    left = [torch.cat([module.left.weight, module.left_gate.weight]), torch.cat([module.left.bias, module.left_gate.bias])]
    right = [torch.cat([module.right.weight, module.right_gate.weight]),
             torch.cat([module.right.bias, module.right_gate.bias])]  # fmt: skip

    def operand(rows: slice, weights: list[torch.Tensor], out: torch.Tensor) -> None:
        """``proj(x) * sigmoid(gate(x))``, padded pairs zeroed, into ``out`` (C, r, L): the
        channel-first layout of the per-channel matmul."""
        projected = linear(normed[rows], *weights).view(-1, 2 * C)
        kernels.gated_operand(projected, None if pairs is None else pairs[rows].flatten(), out.flatten(1))

    normed = _normalised(view, module.norm, dtype, chunk_size)
    # b[c, j, k] for every j first: each output row needs all of it.
    right_operand = torch.empty((C, L, L), dtype=dtype, device=track.device)
    run(lambda rows: operand(rows, right, right_operand[:, rows]), chunks)

    def update(rows: slice) -> None:
        left_operand = torch.empty((C, rows.stop - rows.start, L), dtype=dtype, device=track.device)
        operand(rows, left, left_operand)  # a[c, i, k]
        # out[i, j] = sum_k a[i, k] b[j, k], per channel: (C, r, k) @ (C, k, j) => (C, r, j).
        product = torch.matmul(left_operand, right_operand.transpose(1, 2))
        normed_product = kernels.layer_norm_channels_first(product.flatten(1), module.center_norm, dtype)  # (r j, C)
        value = linear(normed_product, module.output.weight, module.output.bias).view(-1, L, C)
        gate = linear(normed[rows], module.gate.weight, module.gate.bias)
        kernels.add_(view[rows], value, gate)  # z += value * sigmoid(gate)

    run(update, chunks)


def triangle_attention(
    module: rf.TriangleAttention, z: torch.Tensor, mask: torch.Tensor | None, chunk_size: int
) -> torch.Tensor:
    """``z + module(z, mask)``, in place, one sequence and a chunk of rows at a time."""
    for b, track in enumerate(z):
        view = track.transpose(0, 1) if module.ending else track
        # The bias needs the whole track before any row changes.
        normed = _normalised(view, module.norm, module.pair_bias.weight.dtype, chunk_size)
        bias = _pair_bias(normed.__getitem__, view.shape[0], module.pair_bias, None if mask is None else mask[b],
                          chunk_size)[None]  # (1, H, L, L)  # fmt: skip
        # Each row of the chunk is one attention over its L positions.
        update_rows(view, chunk_size, lambda rows, normed=normed, bias=bias: gated_attention(module.attention,
                                                                                            normed[rows], bias))
    return z


def gated_attention(module: rf.GatedAttention, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``module(x, bias)``: ``x`` (N, L, dim), ``bias`` (1 or N, H, L, L)."""
    H, W = module.heads, module.head_width
    # A projection per head and role leaves each head's q, k and v contiguous, so the batched
    # matmuls read them as they are (bfloat16 matmuls copy strided operands first).
    weights = [
        (layer.weight * scale).view(H, W, -1)
        for layer, scale in ((module.query, W**-0.5), (module.key, 1.0), (module.value, 1.0))
    ]
    if SDPA_ON_CPU or x.device.type != "cpu":
        # All heads and rows in one fused kernel: (N, H, L, W), the logits never stored.
        q, k, v = (linear(x, w.flatten(0, 1)).unflatten(-1, (H, W)).transpose(1, 2) for w in weights)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0).transpose(1, 2)
    else:  # each head's result straight into its place
        out = x.new_empty(x.shape[:-1] + (H, W))
        for h in range(H):
            attend(*(linear(x, w[h]) for w in weights), bias[:, h], out=out[..., h, :])
    out = out.flatten(-2)
    out.mul_(linear(x, module.gate.weight, module.gate.bias, activation="sigmoid"))
    return linear(out, module.output.weight, module.output.bias)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``softmax(q k^T + bias) v`` for one head: q, k, v (N, L, W), bias (1 or N, L, L); into
    ``out`` (N, L, W, any strides) if given.

    A few rows at a time, so that their (rows, L, L) logits stay in the CPU caches. This is not
    ``scaled_dot_product_attention``: at this head width (32) PyTorch's CPU flash kernel ran
    1.7x (bf16) to 1.9x (fp32) slower than these three calls on the reference CPU (L = 300).

    >>> q, k, v, bias = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(1, 3, 3)
    >>> ref = torch.softmax(q @ k.transpose(1, 2) + bias, -1) @ v
    >>> torch.allclose(attend(q, k, v, bias), ref, atol=1e-6)
    True
    """
    N, L, _ = q.shape
    out = q.new_empty(v.shape) if out is None else out
    # oneDNN's float32 baddbmm is slow, its bmm fast; in bfloat16 without the fused softmax,
    # baddbmm adds the bias as it writes the logits.
    add_bias_after = q.dtype == torch.float32 or kernels.available()
    for rows in _chunks(N, max(1, _LOGITS_ELEMENTS // (L * L))):
        n = rows.stop - rows.start
        row_bias = bias if bias.shape[0] == 1 else bias[rows]
        # Softmax in float32, then one rounding: sane numerics, and faster on CPU than a bfloat16
        # softmax.
        if add_bias_after:
            logits = torch.bmm(q[rows], k[rows].transpose(1, 2))  # (n, L, L)
            weights = kernels.softmax_with_bias(logits, row_bias, v.dtype)
        else:
            logits = torch.baddbmm(row_bias.expand(n, L, L), q[rows], k[rows].transpose(1, 2))
            weights = torch.softmax(logits, dim=-1, dtype=torch.float32).to(v.dtype)
        torch.bmm(weights, v[rows], out=out[rows])
    return out


def _norm(layer: nn.LayerNorm, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """LayerNorm with float32 statistics and parameters, the result in the compute ``dtype``."""
    if x.device.type == "cpu" and x.dim() == 3 and kernels.available():
        return kernels.layer_norm(x, layer, dtype)
    weight, bias = layer.weight.float(), layer.bias.float()
    if x.dtype == dtype and x.device.type == "cpu":
        # On CPU a bfloat16 input with float32 parameters is normalised in float32; CUDA's kernel
        # wants one dtype for all three.
        return F.layer_norm(x, layer.normalized_shape, weight, bias, layer.eps)
    return F.layer_norm(x.float(), layer.normalized_shape, weight, bias, layer.eps).to(dtype)


def _normalised(track: torch.Tensor, norm: nn.LayerNorm, dtype: torch.dtype, chunk_size: int) -> torch.Tensor:
    """``norm(track)`` of a (L, L, C) track or view, computed a chunk of rows at a time.

    The triangle updates read it twice (all rows for the bias or the right operand, then row
    by row), so it is kept rather than normalised twice.
    """
    out = torch.empty(track.shape, dtype=dtype, device=track.device)
    run(lambda rows: kernels.layer_norm(track[rows], norm, dtype, out=out[rows]), list(_chunks(track.shape[0], chunk_size)))
    return out


def _pair_bias(
    normed_rows: Callable[[slice], torch.Tensor], L: int, projection: nn.Linear, mask: torch.Tensor | None,
    chunk_size: int,
) -> torch.Tensor:
    """Attention bias (H, L, L) = ``projection`` of a normalised (L, L, C) track, given by chunks
    of rows, with padded keys masked."""
    from .heads.rotaformer import masked_value

    bias = by_rows(L, chunk_size, lambda rows: linear(normed_rows(rows), projection.weight))
    bias = bias.permute(2, 0, 1).contiguous()  # (L, L, H) => (H, L, L), each head one block
    return bias if mask is None else bias.masked_fill(~mask, masked_value(bias.dtype))


# ---- linear layers and matmuls -----------------------------------------------------------------


def _use_onednn(x: torch.Tensor) -> bool:
    # The oneDNN op has no backward: autograd always takes the plain PyTorch path. Float16 is for
    # GPUs (PyTorch's own kernels still run it, slowly), and bfloat16 only where the CPU has it.
    return x.device.type == "cpu" and not torch.is_grad_enabled() and onednn_supports(x.dtype)


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "none",
    multiply: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.linear``, then ``activation`` ("none", "relu" or "sigmoid") or a product with
    ``multiply``, via oneDNN on CPU inference.

    PyTorch's float32 CPU matmul is MKL's, which on AMD CPUs runs its AVX2 code: ~100 GFLOP/s
    per core on the reference machine against ~240 for oneDNN on the same weights (bfloat16 goes
    to oneDNN either way, ~480). oneDNN also applies the activation or product as it writes the
    result, saving a pass over it.

    >>> x, w, g = torch.randn(4, 3), torch.randn(5, 3), torch.randn(4, 5)
    >>> torch.allclose(linear(x, w, activation="relu"), torch.relu(x @ w.T), atol=1e-6)
    True
    >>> torch.allclose(linear(x, w, multiply=g), (x @ w.T) * g, atol=1e-6)
    True
    """
    if _use_onednn(x):
        if multiply is not None:
            other = multiply.expand(x.shape[:-1] + (weight.shape[0],)).contiguous()
            return torch.ops.mkldnn._linear_pointwise.binary(x.contiguous(), other, weight, bias, "mul")
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, activation, [], "")
    out = F.linear(x, weight, bias)
    if activation != "none":
        out = getattr(torch, activation)(out)
    return out if multiply is None else out * multiply


@functools.cache
def onednn_float32_matmul_is_exact() -> bool:
    """Whether routing float32 matmuls to oneDNN (``torch.backends.mkldnn.matmul.fp32_precision
    = "bf16"``) keeps float32 precision on this CPU; probed once, on first use.

    The setting allows oneDNN to round inputs to bfloat16; on CPUs without AMX it does not and
    computes in float32, twice as fast as MKL on AMD. Checked with products that bfloat16
    cannot hold (1 + 2**-12), at sizes that take oneDNN's batched path.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        previous = torch.backends.mkldnn.matmul.fp32_precision
    except AttributeError:  # an older PyTorch without the setting
        return False
    try:
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        a = torch.full((4, 64, 300), 1 + 2**-12)
        with torch.no_grad():
            exact = bool((torch.bmm(a, torch.ones(4, 300, 64)) == 300 * (1 + 2**-12)).all())
            exact &= bool((torch.bmm(a[:, :, :32], torch.ones(4, 32, 300)) == 32 * (1 + 2**-12)).all())
    except RuntimeError:
        exact = False
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = previous
    return exact


@contextlib.contextmanager
def onednn_float32_matmuls() -> Iterator[None]:
    """Float32 batched matmuls through oneDNN (~2x MKL on AMD CPUs) while inside, where exact."""
    if not onednn_float32_matmul_is_exact():
        yield
        return
    previous = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    try:
        yield
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = previous


@contextlib.contextmanager
def full_float32_convolutions(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """cuDNN convolutions in full float32 while inside (by default cuDNN may use TF32), for a
    float32 computation on CUDA; elsewhere nothing changes."""
    if device.type != "cuda" or dtype != torch.float32:
        yield
        return
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # PyTorch >= 2.9
        previous, conv.fp32_precision = conv.fp32_precision, "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = previous
    else:
        previous, torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.allow_tf32, False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = previous


# ---- chunks of rows and the threads that run them ----------------------------------------------


def _chunks(length: int, size: int) -> Iterator[slice]:
    for start in range(0, length, size):
        yield slice(start, min(start + size, length))


def auto_chunk_size(length: int, channels: int = 128, workers: int = 1, *, gpu: bool = False) -> int:
    """Rows of an (L, L, channels) track processed at once when ``chunk_size`` is None: at most
    about 2**22 entries per chunk (2**25 on a GPU), in equal chunks, their number a multiple of
    ``workers``.

    >>> auto_chunk_size(300), auto_chunk_size(1000), auto_chunk_size(20), auto_chunk_size(300, workers=2)
    (100, 32, 20, 75)
    >>> auto_chunk_size(1000, gpu=True), auto_chunk_size(2000, gpu=True)
    (250, 125)
    """
    most = max(1, (_CHUNK_ELEMENTS_GPU if gpu else _CHUNK_ELEMENTS) // (length * channels))
    chunks = -(-length // most)
    if workers > 1:  # at least two chunks per worker, so that none waits long for the others
        chunks = -(-max(chunks, 2 * workers) // workers) * workers
    return -(-length // chunks)


class _ChunkThreads:
    """The worker threads of the forward pass in progress, if any (see :func:`chunk_threads`)."""

    pool: ThreadPoolExecutor | None = None
    owner: int | None = None  # the thread that opened the pool; chunks nested in a chunk run in place
    grad_mode: Callable[[], contextlib.AbstractContextManager] = torch.no_grad


_CHUNK_THREADS = _ChunkThreads()


@contextlib.contextmanager
def chunk_threads(threads: int) -> Iterator[None]:
    """Run independent chunks of rows on ``threads`` Python threads, each op single-threaded.

    On a few CPU cores most of the head's ops are short or memory-bound, and splitting each op
    across the cores (PyTorch's intra-op threads) scales poorly, and very badly when another
    process holds a core (OpenMP barriers then wait for the scheduler). Running different
    chunks on different cores scales almost perfectly; PyTorch releases the GIL inside its ops.
    The intra-op thread count is restored on exit.
    """
    if threads <= 1 or _CHUNK_THREADS.pool is not None:
        yield
        return
    previous = torch.get_num_threads()
    inference = torch.is_inference_mode_enabled()
    torch.set_num_threads(1)
    try:
        # Each thread sets its own OpenMP thread count: without it, MKL and oneDNN in a worker
        # open teams of all cores, and the workers' matmuls no longer run side by side.
        with ThreadPoolExecutor(threads, "rotaformer", initializer=torch.set_num_threads, initargs=(1,)) as pool:
            _CHUNK_THREADS.pool, _CHUNK_THREADS.owner = pool, threading.get_ident()
            # Grad mode is per thread: the workers take the caller's.
            _CHUNK_THREADS.grad_mode = torch.inference_mode if inference else torch.no_grad
            yield
    finally:
        _CHUNK_THREADS.pool = _CHUNK_THREADS.owner = None
        torch.set_num_threads(previous)


@contextlib.contextmanager
def cpu_inference(threads: int, dtype: torch.dtype) -> Iterator[None]:
    """CPU inference: chunks on ``threads`` threads, float32 matmuls through oneDNN if exact."""
    with chunk_threads(threads), onednn_float32_matmuls() if dtype == torch.float32 else contextlib.nullcontext():
        yield


def run(work: Callable[[slice], None], chunks: list[slice]) -> None:
    """``work(rows)`` for every chunk: on the chunk threads when there are some."""
    state = _CHUNK_THREADS
    # Autocast is thread-local: workers would not see the caller's, so autocast runs serially.
    serial = state.pool is None or state.owner != threading.get_ident() or len(chunks) < 2
    if serial or torch.is_autocast_enabled("cpu"):
        for rows in chunks:
            work(rows)
        return
    grad_mode = state.grad_mode

    def job(rows: slice) -> None:
        with grad_mode():
            work(rows)

    for future in [state.pool.submit(job, rows) for rows in chunks]:
        future.result()


def by_rows(length: int, chunk_size: int, part: Callable[[slice], torch.Tensor], dim: int = 0) -> torch.Tensor:
    """``torch.cat([part(rows) for each chunk of rows], dim)``, each part written into the result
    as it comes (the parts never all exist at once), the chunks on the chunk threads if any."""
    chunks = list(_chunks(length, chunk_size))
    first = part(chunks[0])
    if len(chunks) == 1:
        return first
    out = first.new_empty(first.shape[:dim] + (length,) + first.shape[dim + 1 :])

    def fill(rows: slice) -> None:
        piece = first if rows is chunks[0] else part(rows)
        out.narrow(dim, rows.start, rows.stop - rows.start).copy_(piece)

    run(fill, chunks)
    return out


def update_rows(view: torch.Tensor, chunk_size: int, update: Callable[[slice], torch.Tensor]) -> None:
    """``view += cat([update(rows) for each chunk of rows])``, rows along dim 0, in place: each
    update is added as it comes (chunks on the chunk threads write disjoint rows)."""

    def add(rows: slice) -> None:
        # Not ``view[rows] += ...``: Python then assigns the sum back (``view[rows] = sum``), a
        # second full pass over the rows that copies them onto themselves.
        kernels.add_(view[rows], update(rows))

    run(add, list(_chunks(view.shape[0], chunk_size)))
