"""Fused CPU kernels for the RotaFormer head's non-matrix work, with pure-PyTorch fallbacks.

PyTorch's eager kernels take a separate pass over memory for each step of a layer norm + cast,
a bias add + softmax + cast, a gate, a mask, a transpose and a residual add; inductor's CPU
kernels would fuse them but hold the GIL, so they cannot run on the head's chunk threads. These
five kernels (``csrc/rotaformer.cpp``, vectorised with ``at::vec``) each do one of those chains
in one pass over a chunk of rows, single-threaded, with the GIL released (they are plain C
functions called through :mod:`ctypes`, which lets go of the GIL for each call):

* :func:`layer_norm`: layer norm of channels-last rows (any row strides) into the compute dtype.
* :func:`layer_norm_channels_first`: the same from a (C, positions) block, written (positions, C):
  the triangle product's transpose and its centre norm in one pass.
* :func:`softmax_with_bias`: ``softmax(logits + bias)`` in float32, written in the compute dtype.
* :func:`gated_operand`: ``value * sigmoid(gate)``, padded pairs zeroed, written channel-first
  straight into the triangle operand.
* :func:`add_`: ``residual += value`` or ``residual += value * sigmoid(gate)``, float32 residual.

The extension is compiled once on first use with ``torch.utils.cpp_extension`` into
``<cache>/extensions/`` (:func:`protrna.weights.registry.cache_root`), keyed by the source, the
torch and Python versions and the CPU's vector width; a failed or timed-out build, or no
compiler, leaves the PyTorch versions in use with one warning (and is not retried until the key
changes or the folder is deleted). ``PROTRNA_NO_EXTENSION=1`` always uses the PyTorch versions.
Each function computes the same thing either way, to float32 rounding (``tests/kernels``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "rotaformer.cpp"

#: Seconds a build may take before it is abandoned (the fallback is then used); see BENCHMARKS.md
#: for how long it took. ``PROTRNA_EXTENSION_BUILD_TIMEOUT`` changes it.
BUILD_TIMEOUT = 120

# Compiler flags per PyTorch CPU capability: at::vec picks its implementation from the
# CPU_CAPABILITY macros, the -m flags let the compiler emit those instructions.
_VECTOR_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-DCPU_CAPABILITY=AVX512",
               "-DCPU_CAPABILITY_AVX512"],  # fmt: skip
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
}

# A child process builds (so that a hung compiler can be stopped); this process only loads.
_BUILD = """
import sys
from torch.utils.cpp_extension import load
load(name=sys.argv[1], sources=[sys.argv[2]], build_directory=sys.argv[3], extra_cflags=sys.argv[4:],
     is_python_module=False, verbose=False)
"""

# The C entry points: (name, argument types); pointers and sizes are 64-bit integers.
_I64, _INT, _PTR, _DOUBLE = ctypes.c_int64, ctypes.c_int, ctypes.c_size_t, ctypes.c_double
_SIGNATURES = {
    "protrna_layer_norm_last": [_PTR, _INT, _I64, _I64, _I64, _I64, _I64, _PTR, _PTR, _DOUBLE, _PTR, _INT],
    "protrna_layer_norm_first": [_PTR, _INT, _I64, _I64, _I64, _PTR, _PTR, _DOUBLE, _PTR, _INT],
    "protrna_softmax_with_bias": [_PTR, _INT, _PTR, _INT, _INT, _I64, _I64, _I64, _PTR, _INT],
    "protrna_gated_operand": [_PTR, _INT, _PTR, _I64, _I64, _PTR, _INT, _I64],
    "protrna_add_gated": [_PTR, _I64, _I64, _I64, _I64, _I64, _PTR, _INT, _PTR, _INT],
}
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}


def _flags() -> list[str]:
    capability = torch.backends.cpu.get_cpu_capability()
    vector = _VECTOR_FLAGS.get("AVX512" if capability.startswith("AVX512") else capability, ["-DCPU_CAPABILITY=DEFAULT"])
    return ["-O3", *vector]


def build_directory() -> Path:
    """Where this source, torch, Python and CPU vector width build the extension:
    ``<cache>/extensions/rotaformer-<key>``, or under ``$PROTRNA_EXTENSIONS_DIR`` if set."""
    from ..weights.registry import cache_root

    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), sys.version.encode(), " ".join(_flags()).encode()):
        key.update(part)
    root = Path(os.environ["PROTRNA_EXTENSIONS_DIR"]) if os.environ.get("PROTRNA_EXTENSIONS_DIR") else cache_root() / "extensions"
    return root / f"rotaformer-{key.hexdigest()[:16]}"


@functools.cache
def extension() -> ctypes.CDLL | None:
    """The compiled kernels (built on first call), or None: disabled, or no build possible."""
    if os.environ.get("PROTRNA_NO_EXTENSION", "0") not in ("", "0"):
        return None
    from filelock import FileLock

    directory = build_directory()
    name = "protrna_rotaformer_" + directory.name.split("-")[1]
    library, failed = directory / f"{name}.so", directory / "build-failed.txt"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with FileLock(str(directory / ".lock")):
            if not library.exists() and not failed.exists():
                _build(name, directory, library, failed)
    except OSError as error:  # an unwritable cache, a lock that cannot be taken
        warnings.warn(f"RotaFormer CPU kernels not available ({error}); using PyTorch's kernels", stacklevel=2)
        return None
    if not library.exists():
        reason = failed.read_text().strip().splitlines()[-1] if failed.exists() else "no library"
        warnings.warn(f"RotaFormer CPU kernels could not be built ({reason}); using PyTorch's kernels, slower. "
                      f"Details in {failed}; delete {directory} to try again", stacklevel=2)  # fmt: skip
        return None
    compiled = ctypes.CDLL(str(library))
    for function, arguments in _SIGNATURES.items():
        getattr(compiled, function).argtypes = arguments
        getattr(compiled, function).restype = None
    return compiled


def _build(name: str, directory: Path, library: Path, failed: Path) -> None:
    timeout = float(os.environ.get("PROTRNA_EXTENSION_BUILD_TIMEOUT", BUILD_TIMEOUT))
    log.info("compiling the RotaFormer CPU kernels once into %s (up to %.0f s; PROTRNA_NO_EXTENSION=1 skips)",
             directory, timeout)  # fmt: skip
    start = time.perf_counter()
    command = [sys.executable, "-c", _BUILD, name, str(SOURCE), str(directory), *_flags()]
    try:
        # A session of its own, so that a timeout stops ninja and the compiler with it.
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True) as child:  # fmt: skip
            try:
                output, _ = child.communicate(timeout=timeout)
                reason = None if child.returncode == 0 and library.exists() else (output or "failed")
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.communicate()
                reason = f"the build took over {timeout:g} s (PROTRNA_EXTENSION_BUILD_TIMEOUT)"
    except OSError as error:
        reason = str(error)
    if reason is not None:
        failed.write_text(reason[-20000:] + "\n")
        return
    log.debug("RotaFormer CPU kernels built in %.1f s", time.perf_counter() - start)


def available() -> bool:
    """Whether the compiled kernels are in use (building them on first call)."""
    return extension() is not None


# ---- the kernels, each with its PyTorch version ------------------------------------------------


def _fusable(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.bfloat16) for t in tensors)


def layer_norm(x: torch.Tensor, norm: nn.LayerNorm, dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """``norm(x)`` with float32 statistics, in ``dtype``: ``x`` (A, B, C) with contiguous channels
    (rows may be strided, e.g. a transposed track), into ``out`` (contiguous) if given.

    >>> norm = nn.LayerNorm(8)
    >>> x = torch.randn(3, 4, 8).transpose(0, 1)  # rows strided
    >>> torch.allclose(layer_norm(x, norm, torch.float32), norm(x), atol=1e-5)
    True
    """
    out = torch.empty(x.shape, dtype=dtype, device=x.device) if out is None else out
    fused = extension() if _fusable(x, out) and x.dim() == 3 and x.stride(-1) == 1 and out.is_contiguous() else None
    if fused is not None:
        weight, bias = norm.weight.float().contiguous(), norm.bias.float().contiguous()
        fused.protrna_layer_norm_last(x.data_ptr(), _DTYPE_CODES[x.dtype], *x.shape, x.stride(0), x.stride(1),
                                      weight.data_ptr(), bias.data_ptr(), norm.eps, out.data_ptr(),
                                      _DTYPE_CODES[out.dtype])  # fmt: skip
    elif x.dtype == torch.float32 and dtype == torch.float32 and x.device.type == "cpu":
        torch.ops.aten.native_layer_norm.out(x, norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps,
                                             out0=out, out1=x.new_empty(x.shape[:-1] + (1,)),
                                             out2=x.new_empty(x.shape[:-1] + (1,)))  # fmt: skip
    else:  # the cast to the compute dtype is the copy into the result
        out.copy_(F.layer_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps))
    return out


def layer_norm_channels_first(x: torch.Tensor, norm: nn.LayerNorm, dtype: torch.dtype) -> torch.Tensor:
    """``norm`` over the channels of ``x`` (C, P) (positions contiguous) => (P, C) in ``dtype``.

    >>> norm = nn.LayerNorm(8)
    >>> x = torch.randn(8, 21)
    >>> torch.allclose(layer_norm_channels_first(x, norm, torch.float32), norm(x.t()), atol=1e-5)
    True
    """
    out = torch.empty((x.shape[1], x.shape[0]), dtype=dtype, device=x.device)
    fused = extension() if _fusable(x) and x.dim() == 2 and x.stride(1) == 1 and dtype in _DTYPE_CODES else None
    if fused is not None:
        weight, bias = norm.weight.float().contiguous(), norm.bias.float().contiguous()
        fused.protrna_layer_norm_first(x.data_ptr(), _DTYPE_CODES[x.dtype], *x.shape, x.stride(0), weight.data_ptr(),
                                       bias.data_ptr(), norm.eps, out.data_ptr(), _DTYPE_CODES[dtype])  # fmt: skip
        return out
    return layer_norm(x.t()[None], norm, dtype, out[None])[0]


def softmax_with_bias(logits: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``softmax(logits + bias, -1)`` in float32, returned in ``dtype``: logits (N, L, S), bias
    (1 or N, L, S). Written over ``logits`` when that is already ``dtype``.

    >>> logits, bias = torch.randn(2, 3, 5), torch.randn(1, 3, 5)
    >>> torch.allclose(softmax_with_bias(logits.clone(), bias, torch.float32), torch.softmax(logits + bias, -1))
    True
    """
    fusable = _fusable(logits, bias) and logits.is_contiguous() and dtype in _DTYPE_CODES
    fused = extension() if fusable and bias.shape[0] in (1, logits.shape[0]) and bias.shape[1:] == logits.shape[1:] else None
    if fused is not None:
        bias = bias.contiguous()
        out = logits if logits.dtype == dtype else torch.empty(logits.shape, dtype=dtype)
        fused.protrna_softmax_with_bias(logits.data_ptr(), _DTYPE_CODES[logits.dtype], bias.data_ptr(),
                                        _DTYPE_CODES[bias.dtype], bias.shape[0] == 1, *logits.shape, out.data_ptr(),
                                        _DTYPE_CODES[dtype])  # fmt: skip
        return out
    if logits.dtype == torch.float32:
        logits += bias
        return torch.softmax(logits, dim=-1).to(dtype)
    return torch.softmax(logits.float() + bias, dim=-1).to(dtype)


def gated_operand(projected: torch.Tensor, mask: torch.Tensor | None, out: torch.Tensor) -> None:
    """``out[c, p] = value[p, c] * sigmoid(gate[p, c])``, zero where ``mask[p]`` is False:
    ``projected`` (P, 2C) holds ``[value | gate]`` per position, ``out`` (C, P) has contiguous
    positions (any channel stride: a slice of rows of a channel-first operand).

    >>> projected, out = torch.randn(6, 4), torch.empty(2, 6)
    >>> gated_operand(projected, torch.tensor([1, 1, 1, 1, 0, 0]).bool(), out)
    >>> value, gate = projected.chunk(2, dim=1)
    >>> torch.allclose(out[:, :4], (value * torch.sigmoid(gate)).t()[:, :4]), bool(out[:, 4:].any())
    (True, False)
    """
    fused = extension() if _fusable(projected, out) and projected.is_contiguous() and out.stride(1) == 1 else None
    if fused is not None:
        keep = None if mask is None else mask.contiguous()
        fused.protrna_gated_operand(projected.data_ptr(), _DTYPE_CODES[projected.dtype],
                                    0 if keep is None else keep.data_ptr(), out.shape[1], out.shape[0],
                                    out.data_ptr(), _DTYPE_CODES[out.dtype], out.stride(0))  # fmt: skip
        return
    value, gate = projected.chunk(2, dim=1)
    gated = value * torch.sigmoid(gate)
    if mask is not None:
        gated.masked_fill_(~mask[:, None], 0.0)
    out.copy_(gated.t())  # as a 2-D transpose, PyTorch copies it block by block


def add_(residual: torch.Tensor, value: torch.Tensor, gate: torch.Tensor | None = None) -> None:
    """``residual += value`` (``gate`` None) or ``residual += value * sigmoid(gate)``, in place:
    ``residual`` float32 (A, B, C) with contiguous channels (rows may be strided), ``value`` and
    ``gate`` contiguous of the same shape.

    >>> residual, value, gate = torch.zeros(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    >>> add_(residual, value, gate)
    >>> torch.allclose(residual, value * torch.sigmoid(gate))
    True
    """
    if gate is None and value.dtype == torch.float32:  # PyTorch's own add is as fast
        residual.add_(value)
        return
    tensors = (residual, value) if gate is None else (residual, value, gate)
    contiguous = value.is_contiguous() and (gate is None or gate.is_contiguous())
    shapes = value.shape == residual.shape and (gate is None or gate.shape == residual.shape)
    fusable = _fusable(*tensors) and residual.dtype == torch.float32 and residual.dim() == 3 and contiguous and shapes
    fused = extension() if fusable and residual.stride(-1) == 1 else None
    if fused is not None:
        fused.protrna_add_gated(residual.data_ptr(), *residual.shape, residual.stride(0), residual.stride(1),
                                value.data_ptr(), _DTYPE_CODES[value.dtype], 0 if gate is None else gate.data_ptr(),
                                _DTYPE_CODES[value.dtype if gate is None else gate.dtype])  # fmt: skip
    elif gate is None:
        residual.add_(value)
    else:
        residual.add_(value * torch.sigmoid(gate))
