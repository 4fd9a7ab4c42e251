"""The RotaFormer secondary-structure head (``ssHead_RF_bprna``): an Evoformer pair stack.

ProtRNA predicts base pairs with an AlphaFold2-style Evoformer over a single "MSA" row (the LM
embedding of the one sequence) and a pair track, then a 5x5 convolution to one logit per pair.
Despite the name there is no rotary embedding in it. This module reproduces the original
TensorFlow head number for number (``tests/heads/test_ss.py``); it differs only in how the work
is done, for speed and memory on CPU:

* The pair track ``z`` (L, L, 128) of each sequence is updated a chunk of rows at a time, so the
  big intermediates (attention logits, triangle operands, the 512-wide transition) exist for a
  few rows only and mostly stay in the CPU caches. With autograd off (``torch.inference_mode``)
  the residual updates go into ``z`` in place; with autograd on, each update is a new tensor.
* The incoming triangle multiplication and the ending-node attention are the outgoing and
  starting-node ones applied to the transposed track, a view, so each exists once.
* Attention runs per head on contiguous q, k, v (one small projection each), the pair bias is
  one (L, L) matrix per head shared by every row, and the softmax is taken into float32.
* CPU inference runs chunks on worker threads, each op single-threaded (:func:`_chunk_threads`),
  sends float32 batched matmuls to oneDNN where that stays exact, and keeps freed memory in the
  allocator while it runs (:func:`protrna.cpu.keep_freed_memory`).
* The outer product mean is factored as ``left @ (right W)`` and never forms (L, L, 32, 32).
* On CPU inference, linear layers go through oneDNN (:func:`linear`), which runs float32 about
  2.4x faster than PyTorch's default MKL path on the AMD CPUs this was tuned on.
* ``head.to(torch.bfloat16)`` computes in bfloat16 while the residual streams stay float32 and
  LayerNorm statistics and softmax are computed in float32, so 72 residual updates do not pile up
  bf16 rounding. ``benchmarks/bench_ss_head.py`` measures speed, memory and the logit change.
* On GPUs the same code runs with fewer, larger launches: attention is PyTorch's fused
  ``scaled_dot_product_attention`` over all heads and rows of a chunk, chunks are 8x larger, and
  the pair transition is not split further. On the lent H200 the CPU-shaped path was bound by
  kernel launches (2 blocks at L = 300: 81 ms of CPU time for 32 ms of GPU work, 976 softmax
  launches). In float32 the output convolution is kept out of TF32 (cuDNN's default), whose
  10-bit mantissa moved the parity fixture's logits by 8e-3.
* Batches: padded keys are masked in every attention, padded pairs are zeroed in the triangle
  multiplication operands, and the track is zeroed outside each sequence before the convolution,
  so a padded sequence gets the logits it gets alone. Batch similar lengths together: padding
  costs as much compute as real positions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..cpu import keep_freed_memory
from .saving import SavedHead

#: ``config.json`` marker that tells a head directory from a language-model directory.
MODEL_TYPE = "protrna-rotaformer"

# A masked key gets this logit: finite, so no row can turn into NaN, and far enough below any
# real logit that its softmax weight is exactly zero in float32 and bfloat16.
_MASKED = -1e9

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

# Attention through ``F.scaled_dot_product_attention`` on CPU too (see :func:`_attend` for why it
# is not the CPU default); off the CPU it is always used. Tests switch it on to compare the paths.
_SDPA_ON_CPU = False

# Shorter RNAs leave CPU threading to PyTorch's intra-op threads by default: their ops are too
# small for chunk threads to pay off. On the reference 2-core CPU (12 blocks) intra-op threads
# took 0.12 / 0.39 / 1.07 s in bf16 at L = 50 / 100 / 150, chunk threads 0.25 / 0.47 / 1.10 s
# (fp32 at L = 50 and 150: 0.17 / 1.64 s against 0.26 / 1.75 s). From L = 200 the two were within
# the run-to-run noise (+-10 %), and chunk threads degrade less when another process holds a core.
_CHUNK_THREADS_MIN_LENGTH = 176


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


# ---- numerics and chunking helpers -------------------------------------------------------------


def _onednn_linear_available() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._linear_pointwise(torch.ones(1, 2), torch.ones(2, 2), None, "none", [], "")
    except (AttributeError, RuntimeError):
        return False
    return True


_ONEDNN_LINEAR = _onednn_linear_available()


def _use_onednn(x: torch.Tensor) -> bool:
    # The oneDNN op has no backward: autograd always takes the plain PyTorch path. It has no
    # float16 kernel on CPUs without AVX512-FP16 either (float16 is for GPUs; PyTorch's own
    # kernels still run it, slowly).
    return _ONEDNN_LINEAR and x.device.type == "cpu" and x.dtype != torch.float16 and not torch.is_grad_enabled()


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


def _onednn_float32_matmul_is_exact() -> bool:
    """Whether routing float32 matmuls to oneDNN (``torch.backends.mkldnn.matmul.fp32_precision
    = "bf16"``) keeps float32 precision on this CPU.

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


_EXACT_ONEDNN_FLOAT32 = _onednn_float32_matmul_is_exact()


@contextlib.contextmanager
def _onednn_float32_matmul() -> Iterator[None]:
    """Float32 batched matmuls through oneDNN (~2x MKL on AMD CPUs) where that stays exact."""
    if not _EXACT_ONEDNN_FLOAT32:
        yield
        return
    previous = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    try:
        yield
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = previous


@contextlib.contextmanager
def _no_tf32_convolutions() -> Iterator[None]:
    """cuDNN convolutions in full float32 while inside (by default cuDNN may use TF32)."""
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


def _norm(layer: nn.LayerNorm, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """LayerNorm with float32 statistics and parameters, the result in the compute ``dtype``."""
    weight, bias = layer.weight.float(), layer.bias.float()
    if x.dtype == dtype and x.device.type == "cpu":
        # On CPU a bfloat16 input with float32 parameters is normalised in float32; CUDA's kernel
        # wants one dtype for all three.
        return F.layer_norm(x, layer.normalized_shape, weight, bias, layer.eps)
    return F.layer_norm(x.float(), layer.normalized_shape, weight, bias, layer.eps).to(dtype)


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
    """The worker threads of the forward pass in progress, if any (see :func:`_chunk_threads`)."""

    pool: ThreadPoolExecutor | None = None
    owner: int | None = None  # the thread that opened the pool; chunks nested in a chunk run in place
    grad_mode: Callable[[], contextlib.AbstractContextManager] = torch.no_grad


_CHUNK_THREADS = _ChunkThreads()


@contextlib.contextmanager
def _chunk_threads(threads: int) -> Iterator[None]:
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
def _cpu_matmuls(threads: int, dtype: torch.dtype) -> Iterator[None]:
    """CPU inference: chunks on ``threads`` threads, float32 matmuls through oneDNN if exact."""
    with _chunk_threads(threads), _onednn_float32_matmul() if dtype == torch.float32 else contextlib.nullcontext():
        yield


def _run(work: Callable[[slice], None], chunks: list[slice]) -> None:
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


def _by_rows(length: int, chunk_size: int, part: Callable[[slice], torch.Tensor], dim: int = 0) -> torch.Tensor:
    """``torch.cat([part(rows) for each chunk of rows], dim)``. With autograd off, each part goes
    into the result as it comes (the parts never all exist at once) and chunks may run on
    worker threads."""
    chunks = list(_chunks(length, chunk_size))
    if torch.is_grad_enabled():
        return torch.cat([part(rows) for rows in chunks], dim)
    first = part(chunks[0])
    if len(chunks) == 1:
        return first
    out = first.new_empty(first.shape[:dim] + (length,) + first.shape[dim + 1 :])

    def fill(rows: slice) -> None:
        piece = first if rows is chunks[0] else part(rows)
        out.narrow(dim, rows.start, rows.stop - rows.start).copy_(piece)

    _run(fill, chunks)
    return out


def _update_rows(view: torch.Tensor, chunk_size: int, update: Callable[[slice], torch.Tensor]) -> torch.Tensor:
    """``view + cat([update(rows) for each chunk of rows])``, rows along dim 0.

    With autograd off, each update is added into ``view`` in place as it comes (chunks may run
    on worker threads: they write disjoint rows). With autograd on, a new tensor (in-place
    writes would corrupt what autograd saved for the backward pass).
    """
    chunks = list(_chunks(view.shape[0], chunk_size))
    if torch.is_grad_enabled():
        return view + torch.cat([update(rows) for rows in chunks]).to(view.dtype)

    def add(rows: slice) -> None:
        view[rows] += update(rows)

    _run(add, chunks)
    return view


def _per_sequence(
    update: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], z: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Apply a one-sequence pair update to each (L, L, C) track of ``z`` (B, L, L, C)."""
    tracks = [update(z[b], None if mask is None else mask[b]) for b in range(z.shape[0])]
    return z if not torch.is_grad_enabled() else torch.stack(tracks)


# ---- the Evoformer parts -----------------------------------------------------------------------


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
        # A projection per head and role leaves each head's q, k and v contiguous, so the batched
        # matmuls read them as they are (bfloat16 matmuls copy strided operands first).
        weights = [
            (layer.weight * scale).view(H, W, -1)
            for layer, scale in ((self.query, W**-0.5), (self.key, 1.0), (self.value, 1.0))
        ]
        if _SDPA_ON_CPU or x.device.type != "cpu":
            # All heads and rows in one fused kernel: (N, H, L, W), the logits never stored.
            q, k, v = (linear(x, w.flatten(0, 1)).unflatten(-1, (H, W)).transpose(1, 2) for w in weights)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0).transpose(1, 2)
        elif torch.is_grad_enabled():
            heads = [_attend(*(linear(x, w[h]) for w in weights), bias[:, h]) for h in range(H)]
            out = torch.stack(heads, dim=2)  # H x (N, L, W) => (N, L, H, W)
        else:  # each head's result straight into its place
            out = x.new_empty(x.shape[:-1] + (H, W))
            for h in range(H):
                _attend(*(linear(x, w[h]) for w in weights), bias[:, h], out=out[..., h, :])
        out = out.flatten(-2)
        out = out * linear(x, self.gate.weight, self.gate.bias, activation="sigmoid")
        return linear(out, self.output.weight, self.output.bias)


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``softmax(q k^T + bias) v`` for one head: q, k, v (N, L, W), bias (1 or N, L, L); into
    ``out`` (N, L, W, any strides) if given, autograd off.

    A few rows at a time, so that their (rows, L, L) logits stay in the CPU caches. This is not
    ``scaled_dot_product_attention``: at this head width (32) PyTorch's CPU flash kernel ran
    1.7x (bf16) to 1.9x (fp32) slower than these three calls on the reference CPU (L = 300).

    >>> q, k, v, bias = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(1, 3, 3)
    >>> ref = torch.softmax(q @ k.transpose(1, 2) + bias, -1) @ v
    >>> torch.allclose(_attend(q, k, v, bias), ref, atol=1e-6)
    True
    """
    N, L, _ = q.shape
    parts = []
    for rows in _chunks(N, max(1, _LOGITS_ELEMENTS // (L * L))):
        n = rows.stop - rows.start
        row_bias = bias.expand(n, L, L) if bias.shape[0] == 1 else bias[rows]
        if q.dtype == torch.float32:  # oneDNN's float32 baddbmm is slow, its bmm fast
            logits = torch.bmm(q[rows], k[rows].transpose(1, 2))  # (n, L, L)
            logits += row_bias
        else:
            logits = torch.baddbmm(row_bias, q[rows], k[rows].transpose(1, 2))
        # Softmax into float32, then one rounding: sane numerics, and faster on CPU than a
        # bfloat16 softmax.
        weights = torch.softmax(logits, dim=-1, dtype=torch.float32).to(v.dtype)
        if out is None:
            parts.append(torch.bmm(weights, v[rows]))
        else:
            torch.bmm(weights, v[rows], out=out[rows])
    if out is not None:
        return out
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _normalised(track: torch.Tensor, norm: nn.LayerNorm, dtype: torch.dtype, chunk_size: int) -> torch.Tensor:
    """``norm(track)`` of a (L, L, C) track or view, computed a chunk of rows at a time.

    The triangle updates read it twice (all rows for the bias or the right operand, then row
    by row), so it is kept rather than normalised twice.
    """
    L = track.shape[0]
    if torch.is_grad_enabled():
        return torch.cat([_norm(norm, track[rows], dtype) for rows in _chunks(L, chunk_size)])
    out = torch.empty(track.shape, dtype=dtype, device=track.device)
    weight, bias = norm.weight.float(), norm.bias.float()

    def fill(rows: slice) -> None:
        x = track[rows].float()
        if dtype == torch.float32:  # straight into the result
            stats = x.new_empty(x.shape[:-1] + (1,)), x.new_empty(x.shape[:-1] + (1,))
            torch.ops.aten.native_layer_norm.out(x, norm.normalized_shape, weight, bias, norm.eps,
                                                 out0=out[rows], out1=stats[0], out2=stats[1])  # fmt: skip
        else:  # the cast to the compute dtype is the copy into the result
            out[rows].copy_(F.layer_norm(x, norm.normalized_shape, weight, bias, norm.eps))

    _run(fill, list(_chunks(L, chunk_size)))
    return out


def _pair_bias(
    normed_rows: Callable[[slice], torch.Tensor], L: int, projection: nn.Linear, mask: torch.Tensor | None,
    chunk_size: int,
) -> torch.Tensor:
    """Attention bias (H, L, L) = ``projection`` of a normalised (L, L, C) track, given by chunks
    of rows, with padded keys masked."""
    bias = _by_rows(L, chunk_size, lambda rows: linear(normed_rows(rows), projection.weight))
    bias = bias.permute(2, 0, 1).contiguous()  # (L, L, H) => (H, L, L), each head one block
    # float16 cannot hold _MASKED: its most negative value masks as well (softmax weight 0).
    return bias if mask is None else bias.masked_fill(~mask, max(_MASKED, torch.finfo(bias.dtype).min))


class RowAttentionWithPairBias(nn.Module):
    """Self-attention along the single row, biased by a projection of the pair track."""

    def __init__(self, config: RotaFormerConfig):
        super().__init__()
        c = config
        self.norm = nn.LayerNorm(c.single_dim, eps=1e-5)  # query_norm
        self.pair_norm = nn.LayerNorm(c.pair_dim, eps=1e-5)  # feat_2d_norm
        self.pair_bias = nn.Linear(c.pair_dim, c.msa_heads, bias=False)  # feat_2d_weights
        self.attention = GatedAttention(c.single_dim, c.msa_heads, c.head_width, c.single_dim)

    def forward(self, m: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None, chunk_size: int) -> torch.Tensor:
        """The update of ``m`` (B, L, single_dim), in the compute dtype."""
        dtype = self.pair_bias.weight.dtype
        biases = []
        for b, track in enumerate(z):  # the normalised track is used once: never stored whole
            normed_rows = lambda rows, track=track: _norm(self.pair_norm, track[rows], dtype)  # noqa: E731
            biases.append(_pair_bias(normed_rows, track.shape[0], self.pair_bias, None if mask is None else mask[b],
                                     chunk_size))  # fmt: skip
        return self.attention(_norm(self.norm, m, dtype), torch.stack(biases))


class Transition(nn.Module):
    """LayerNorm, Linear to ``factor * dim``, ReLU, Linear back: a position-wise feed-forward."""

    def __init__(self, dim: int, factor: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.expand = nn.Linear(dim, factor * dim)
        self.contract = nn.Linear(factor * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The update of ``x`` (any leading shape), in the compute dtype."""
        x = _norm(self.norm, x, self.expand.weight.dtype)
        hidden = linear(x, self.expand.weight, self.expand.bias, activation="relu")
        return linear(hidden, self.contract.weight, self.contract.bias)

    def update_pair(self, z: torch.Tensor, chunk_size: int) -> torch.Tensor:
        """``z + self(z)`` for z (B, L, L, C), a chunk of rows at a time."""
        rows_of_all_tracks = z.flatten(0, 1)  # positions are independent
        # Fewer rows than elsewhere: the 4x wider hidden layer should stay in the CPU caches.
        if z.device.type == "cpu":
            chunk_size = min(chunk_size, max(1, _TRANSITION_POSITIONS // z.shape[2]))
        return _update_rows(rows_of_all_tracks, chunk_size, lambda rows: self(rows_of_all_tracks[rows])).view_as(z)


class OuterProductMean(nn.Module):
    """Pair update from the single row: ``out[i, j] = sum_ce l[i, c] r[j, e] W[c, e, :] + b``.

    With one row the "mean" divides by 1 + 1e-3 (the original's ``n_rows + 1e-3``). It is
    computed as ``l @ (r W)``: ``r W`` is small (outer, L * pair_dim) and the product is one
    matmul per chunk of rows, never an (L, L, outer, outer) tensor.
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

    def forward(self, m: torch.Tensor, z: torch.Tensor, chunk_size: int) -> torch.Tensor:
        dtype = self.left.weight.dtype
        n, P = self.outer_dim, self.output.out_features
        scale = 1.0 / (1.0 + 1e-3)  # one row: the mean divides by n_rows + 1e-3
        x = _norm(self.norm, m, dtype)
        left = linear(x, self.left.weight * scale, self.left.bias * scale)  # (B, L, n)
        right = linear(x, self.right.weight, self.right.bias)
        weight = self.output.weight.view(P, n, n)  # (f, c, e)
        bias = self.output.bias * scale

        def update(track: torch.Tensor, b: int) -> torch.Tensor:
            L = track.shape[0]
            # (r W)[c, j, f] = sum_e r[j, e] W[c, e, f], as (c, j * f): one matmul per chunk.
            right_w = torch.einsum("je,fce->cjf", right[b], weight).reshape(n, L * P)
            return _update_rows(track, chunk_size, lambda rows: (left[b, rows] @ right_w).view(-1, L, P) + bias)

        tracks = [update(z[b], b) for b in range(z.shape[0])]
        return z if not torch.is_grad_enabled() else torch.stack(tracks)


class TriangleMultiplication(nn.Module):
    """Triangle update of the pair track with gated projections.

    Outgoing (``ikc,jkc->ijc``): ``out[i, j] = sum_k a[i, k] * b[j, k]``, with
    ``a = left(x) * sigmoid(left_gate(x))``, ``b`` likewise, x the normalised track; then the
    centre LayerNorm, output projection and a sigmoid gate from x. Incoming (``kjc,kic->ijc``)
    is the outgoing update of the transposed track, transposed back (``incoming=True``).
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

    def _operand(self, x: torch.Tensor, side: str, mask: torch.Tensor | None) -> torch.Tensor:
        """``proj(x) * sigmoid(gate(x))``, padded pairs zeroed: x (r, L, C) => (C, r, L), the
        channel-first layout of the per-channel matmul."""
        projection, gate = (self.left, self.left_gate) if side == "left" else (self.right, self.right_gate)
        r, L, C = x.shape
        gate_value = linear(x, gate.weight, gate.bias, activation="sigmoid")
        out = linear(x, projection.weight, projection.bias, multiply=gate_value)
        if mask is not None:
            out = out.masked_fill(~mask[..., None], 0.0)
        # As a 2-D transpose, PyTorch copies it block by block (much faster than a 3-D permute).
        return out.view(r * L, C).t().contiguous().view(C, r, L)

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None, chunk_size: int) -> torch.Tensor:
        return _per_sequence(lambda track, m: self._update(track, m, chunk_size), z, mask)

    def _update(self, track: torch.Tensor, mask: torch.Tensor | None, chunk_size: int) -> torch.Tensor:
        dtype = self.left.weight.dtype
        view = track.transpose(0, 1) if self.incoming else track
        L = view.shape[0]
        pair_mask = None if mask is None else mask[:, None] & mask[None, :]

        def rows_mask(rows: slice) -> torch.Tensor | None:
            return None if pair_mask is None else pair_mask[rows]

        normed = _normalised(view, self.norm, dtype, chunk_size)
        # b[c, j, k] for every j first: each output row needs all of it.
        right = _by_rows(L, chunk_size, lambda rows: self._operand(normed[rows], "right", rows_mask(rows)), dim=1)

        def update(rows: slice) -> torch.Tensor:
            x = normed[rows]
            left = self._operand(x, "left", rows_mask(rows))  # (C, r, k)
            # out[i, j] = sum_k a[i, k] b[j, k], per channel: (C, r, k) @ (C, k, j) => (r, j, C).
            product = torch.matmul(left, right.transpose(1, 2)).permute(1, 2, 0)
            gate = linear(x, self.gate.weight, self.gate.bias, activation="sigmoid")
            return linear(_norm(self.center_norm, product, dtype), self.output.weight, self.output.bias, multiply=gate)

        view = _update_rows(view, chunk_size, update)
        return view.transpose(0, 1) if self.incoming else view


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

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None, chunk_size: int) -> torch.Tensor:
        return _per_sequence(lambda track, m: self._update(track, m, chunk_size), z, mask)

    def _update(self, track: torch.Tensor, mask: torch.Tensor | None, chunk_size: int) -> torch.Tensor:
        view = track.transpose(0, 1) if self.ending else track
        # The bias needs the whole track before any row changes.
        normed = _normalised(view, self.norm, self.pair_bias.weight.dtype, chunk_size)
        bias = _pair_bias(normed.__getitem__, view.shape[0], self.pair_bias, mask, chunk_size)[None]  # (1, H, L, L)
        # Each row of the chunk is one attention over its L positions.
        view = _update_rows(view, chunk_size, lambda rows: self.attention(normed[rows], bias))
        return view.transpose(0, 1) if self.ending else view


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
        self, m: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None, chunk_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``m`` (B, L, single_dim) and ``z`` (B, L, L, pair_dim), both float32."""
        m = m + self.row_attention(m, z, mask, chunk_size)
        m = m + self.single_transition(m)
        z = self.outer_product_mean(m, z, chunk_size)
        z = self.triangle_multiplication_outgoing(z, mask, chunk_size)
        z = self.triangle_multiplication_incoming(z, mask, chunk_size)
        z = self.triangle_attention_starting(z, mask, chunk_size)
        z = self.triangle_attention_ending(z, mask, chunk_size)
        z = self.pair_transition.update_pair(z, chunk_size)
        return m, z


class Embedding(nn.Module):
    """LM representation (B, L, input_dim) => single row (B, L, single_dim) and pair track
    (B, L, L, pair_dim): ``z[i, j] = left(x_i) + right(x_j) + relpos(one_hot(clip(i - j + d,
    0, 2d)))``."""

    def __init__(self, config: RotaFormerConfig):
        super().__init__()
        c = config
        self.max_relative_distance = c.max_relative_distance
        self.single = nn.Linear(c.input_dim, c.single_dim)  # preprocess_1d
        self.left = nn.Linear(c.input_dim, c.pair_dim)  # left_single
        self.right = nn.Linear(c.input_dim, c.pair_dim)  # right_single
        self.relative_position = nn.Linear(2 * c.max_relative_distance + 1, c.pair_dim)  # pair_activiations

    def forward(self, x: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        L = x.shape[1]
        m = linear(x, self.single.weight, self.single.bias).float()
        left = linear(x, self.left.weight, self.left.bias).float()
        right = linear(x, self.right.weight, self.right.bias).float()
        d = self.max_relative_distance
        position = torch.arange(L, device=x.device)
        offset = (position[:, None] - position[None, :] + d).clamp(0, 2 * d)  # (L, L): i - j + d
        # A linear layer applied to a one-hot vector is a row of its weight plus the bias.
        table = (self.relative_position.weight.T + self.relative_position.bias).float()  # (2d + 1, P)
        z = _by_rows(L, chunk_size, lambda rows: table[offset[rows]] + left[:, rows, None] + right[:, None], dim=1)
        return m, z


# ---- the head ----------------------------------------------------------------------------------


class RotaFormer(SavedHead):
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
    Run inference under ``torch.inference_mode()`` (the pair track is then updated in place).
    For training, ``head.gradient_checkpointing = True`` keeps only each block's input for the
    backward pass.

    CPU inference runs chunks of rows on ``head.chunk_threads`` threads, each op
    single-threaded; 1 leaves threading to PyTorch. None (the default): PyTorch's
    ``torch.get_num_threads()`` chunk threads for L >= 176, PyTorch's own threading below.
    """

    model_type = MODEL_TYPE
    config_class = RotaFormerConfig
    description = "RotaFormer head"

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

    def forward(
        self,
        representations: torch.Tensor,
        lengths: torch.Tensor | None = None,
        *,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Pair logits (B, L, L), or (L, L) for a batch of one; see the class docstring.

        ``chunk_size``: rows of a pair track processed at once (None: from L, see
        :func:`auto_chunk_size`). Smaller needs less memory; the logits do not depend on it.
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
        mask = self._mask(lengths, B, L, representations.device)
        on_cpu = representations.device.type == "cpu"
        threads = 1
        if on_cpu and not torch.is_grad_enabled():
            threads = self.chunk_threads or (torch.get_num_threads() if L >= _CHUNK_THREADS_MIN_LENGTH else 1)
        chunk_size = chunk_size or auto_chunk_size(L, self.config.pair_dim, threads, gpu=not on_cpu)

        x = representations[:, 1:-1].to(self.dtype)  # BOS and EOS off, as the original
        if mask is not None:
            x = x.masked_fill(~mask[..., None], 0.0)  # EOS and padding never enter
        cpu_inference = on_cpu and not torch.is_grad_enabled()
        with keep_freed_memory() if cpu_inference else contextlib.nullcontext():
            with _cpu_matmuls(threads, self.dtype) if cpu_inference else contextlib.nullcontext():
                m, z = self.embedding(x, chunk_size)
                for block in self.blocks:
                    if self.gradient_checkpointing and torch.is_grad_enabled():
                        m, z = checkpoint(block, m, z, mask, chunk_size, use_reentrant=False)
                    else:
                        m, z = block(m, z, mask, chunk_size)
            logits = self._logits(z, mask)  # one convolution: PyTorch's own threads do it best
        return logits[0] if B == 1 else logits

    @staticmethod
    def _mask(lengths: torch.Tensor | None, B: int, L: int, device: torch.device) -> torch.Tensor | None:
        """(B, L) bool of real nucleotides, or None when no row is padded (the fast path)."""
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

    def _logits(self, z: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Zero the track outside each sequence (the original's conv sees zeros past the border),
        convolve, symmetrise, zero the logits outside each sequence."""
        pair_mask = None if mask is None else mask[:, :, None] & mask[:, None, :]
        if pair_mask is not None:
            z = z.masked_fill(~pair_mask[..., None], 0.0)
        # (B, L, L, C) => (B, C, L, L): a channels-last view, which conv2d takes as it is.
        exact = z.is_cuda and self.dtype == torch.float32
        with _no_tf32_convolutions() if exact else contextlib.nullcontext():
            logits = self.conv(z.permute(0, 3, 1, 2).to(self.dtype))[:, 0].float()
        logits = 0.5 * (logits + logits.transpose(1, 2))
        if pair_mask is not None:
            logits = logits.masked_fill(~pair_mask, 0.0)
        return logits
