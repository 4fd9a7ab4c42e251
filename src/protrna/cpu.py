"""Faster CPU inference: linear layers with oneDNN-packed weights, and an allocator that keeps
freed memory while a job runs.

On x86 CPUs PyTorch's default fp32 matmul (MKL) leaves about half of the machine unused for the
skinny-by-wide products of a transformer; oneDNN with weights reordered once into its blocked
layout runs them about twice as fast (measured in ``benchmarks/bench_embed.py``) and fuses the
feed-forward GELU. This is what ``torch.compile``'s CPU freezing pass does, without compiling a
graph per input shape. It is for inference only: packed weights take no gradients, so the
training code never packs.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import sys
import threading
from typing import Callable, Iterator

import torch
from torch import nn

log = logging.getLogger(__name__)


@functools.cache
def onednn_available() -> bool:
    """Whether this PyTorch build has the oneDNN linear ops used here (CPU builds for x86 do):
    packed and plain weights, with an activation or a product. Probed once, on first use."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        x, plain = torch.ones(1, 2), torch.ones(2, 2)
        torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(plain, 1), None, "none", [], "")
        torch.ops.mkldnn._linear_pointwise(x, plain, None, "sigmoid", [], "")
        torch.ops.mkldnn._linear_pointwise.binary(x, torch.ones(1, 2), plain, None, "mul")
    except (AttributeError, RuntimeError):
        return False
    return True


def onednn_supports(dtype: torch.dtype) -> bool:
    """Whether oneDNN's linear ops run ``dtype`` on this CPU: float32 wherever they exist,
    bfloat16 only with AVX512-BF16 / AVX512BW or AVX-NE-CONVERT (on an AVX2-only CPU such as
    AMD Zen 3 oneDNN refuses bfloat16 and PyTorch's own kernels run it, ~10x slower than float32)."""
    if dtype == torch.float32:
        return onednn_available()
    if dtype == torch.bfloat16:
        return onednn_available() and _onednn_bfloat16()
    return False


@functools.cache
def _onednn_bfloat16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class PackedLinear(nn.Module):
    """``nn.Linear`` (optionally followed by exact GELU) with a oneDNN-packed weight.

    >>> linear = nn.Linear(8, 4)
    >>> x = torch.randn(3, 5, 8)
    >>> torch.allclose(PackedLinear(linear, "gelu")(x), nn.functional.gelu(linear(x)), atol=1e-5)
    True
    """

    def __init__(self, linear: nn.Linear, activation: str = "none", rows_hint: int = 1536):
        super().__init__()
        if activation not in ("none", "gelu"):
            raise ValueError(f"unsupported activation {activation!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        # The rows hint lets oneDNN pick a blocking suited to the expected batch of tokens.
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(weight, rows_hint))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.activation = activation
        # "none" selects the exact (erf) GELU that ESM uses, not the tanh approximation.
        self.algorithm = "none" if activation == "gelu" else ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(
            x.contiguous(), self.packed_weight, self.bias, self.activation, [], self.algorithm
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class _FusedIntermediate(nn.Module):
    """Replaces ESM's ``intermediate`` block (dense then GELU) by one fused packed linear."""

    def __init__(self, intermediate: nn.Module, rows_hint: int):
        super().__init__()
        self.dense = PackedLinear(intermediate.dense, "gelu", rows_hint)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dense(hidden_states)


def pack_for_cpu_inference(model, rows_hint: int = 1536) -> Callable[[], None] | None:
    """Swap the transformer's linear layers of a CPU :class:`~protrna.ProtRNA` for packed ones.

    Call after the model has its final dtype (float32 or bfloat16), for inference only. Returns
    a function that puts the original layers back (drop it to free them), or ``None`` where
    oneDNN is not usable (or has no kernel for the model's dtype on this CPU) and the model was
    left as it was.
    """
    if model.device.type != "cpu" or model.dtype not in (torch.float32, torch.bfloat16):
        return None
    if getattr(model, "packed_for_cpu", False) or not onednn_supports(model.dtype):
        return None
    swapped: list[tuple[nn.Module, str, nn.Module]] = []

    def swap(parent: nn.Module, name: str, replacement: nn.Module) -> None:
        swapped.append((parent, name, getattr(parent, name)))
        setattr(parent, name, replacement)

    for layer in model.lm.esm.encoder.layer:
        attention = layer.attention
        for name in ("query", "key", "value"):
            swap(attention.self, name, PackedLinear(getattr(attention.self, name), rows_hint=rows_hint))
        swap(attention.output, "dense", PackedLinear(attention.output.dense, rows_hint=rows_hint))
        swap(layer, "intermediate", _FusedIntermediate(layer.intermediate, rows_hint))
        swap(layer.output, "dense", PackedLinear(layer.output.dense, rows_hint=rows_hint))
    model.packed_for_cpu = True
    log.debug("packed %d transformer blocks for oneDNN", len(model.lm.esm.encoder.layer))
    # In bfloat16 on CPU, plain matmul + softmax attention beat the SDPA kernel by ~5 % at ESM's
    # 64-wide heads (benchmarks/bench_embed.py); in float32 SDPA is as fast or faster.
    attention = model.lm.config._attn_implementation
    if model.dtype == torch.bfloat16 and attention != "eager":
        model.lm.set_attn_implementation("eager")

    def restore() -> None:
        for parent, name, original in reversed(swapped):
            setattr(parent, name, original)
        if model.lm.config._attn_implementation != attention:
            model.lm.set_attn_implementation(attention)
        model.packed_for_cpu = False

    return restore


# glibc's mallopt parameters, and the values its own dynamic rule settles on (64-bit): it raises
# the mmap threshold up to 32 MB as mapped blocks are freed, and keeps the trim threshold twice it.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_SETTLED_MMAP_THRESHOLD = 32 << 20
_SETTLED_TRIM_THRESHOLD = 2 * _SETTLED_MMAP_THRESHOLD


class _KeptMemory:
    lock = threading.Lock()
    depth = 0  # nested keep_freed_memory() contexts open


@contextlib.contextmanager
def keep_freed_memory() -> Iterator[None]:
    """While inside, glibc's malloc keeps freed memory for reuse instead of returning it.

    The structure head allocates temporaries of a few MB per chunk of rows; by default glibc
    maps big blocks fresh from the kernel and trims freed heap, so each chunk pays ~1 us per 4 KB
    page to fault memory in again (8 % of the bf16 and 20 % of the float32 head time at L = 300
    on the reference VM). Contexts nest; the outermost exit returns the freed memory
    (``malloc_trim``) and leaves the thresholds where glibc's dynamic rule would have brought
    them: setting one through ``mallopt`` turns that rule off for good, and glibc's 128 KB
    starting value then sends every larger tensor to a fresh mapping, which made the 650M
    language model 24 % slower for the rest of the process. Skipped off glibc, when malloc is
    tuned through the environment (``MALLOC_*``, ``GLIBC_TUNABLES``), or with
    ``PROTRNA_MALLOC_TUNING=0``.
    """
    libc = _glibc()
    if libc is None:
        yield
        return
    with _KeptMemory.lock:
        _KeptMemory.depth += 1
        if _KeptMemory.depth == 1:
            libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
            libc.mallopt(_M_MMAP_THRESHOLD, 1 << 28)
    try:
        yield
    finally:
        with _KeptMemory.lock:
            _KeptMemory.depth -= 1
            if _KeptMemory.depth == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, _SETTLED_MMAP_THRESHOLD)
                libc.mallopt(_M_TRIM_THRESHOLD, _SETTLED_TRIM_THRESHOLD)
                libc.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or os.environ.get("PROTRNA_MALLOC_TUNING", "1") == "0":
        return None
    if any(key.startswith("MALLOC_") for key in os.environ) or "GLIBC_TUNABLES" in os.environ:
        return None  # the user tuned malloc already
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - absent outside glibc (musl)
    except (OSError, AttributeError):
        return None
    return libc
