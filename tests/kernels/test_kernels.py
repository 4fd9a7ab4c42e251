"""The fused CPU kernels (:mod:`protrna.kernels`) against their PyTorch versions, one by one and
inside the whole head, and the build's fallbacks: disabled, failed, timed out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from torch import nn

from protrna import kernels
from protrna.heads.ss import RotaFormer
from protrna.weights.keras_ss_head import load_ss_head_h5
from tests.heads.common import TINY, copy_of, randomise, run

DTYPES = [torch.float32, torch.bfloat16]


def pytorch_version(call, *args, **kwargs):
    """``call`` with the compiled kernels switched off (``PROTRNA_NO_EXTENSION=1``)."""
    previous = os.environ.get("PROTRNA_NO_EXTENSION")
    os.environ["PROTRNA_NO_EXTENSION"] = "1"
    kernels.extension.cache_clear()
    try:
        assert not kernels.available()
        return call(*args, **kwargs)
    finally:
        if previous is None:
            del os.environ["PROTRNA_NO_EXTENSION"]
        else:
            os.environ["PROTRNA_NO_EXTENSION"] = previous
        kernels.extension.cache_clear()


@pytest.fixture(scope="module")
def compiled():
    kernels.extension.cache_clear()
    if not kernels.available():
        pytest.skip(f"the kernels could not be built here: see {kernels.build_directory()}")


def assert_close(fused: torch.Tensor, reference: torch.Tensor) -> None:
    """Equal to float32 rounding (float32), or to one bfloat16 rounding step (bfloat16: the
    PyTorch versions round some intermediate products to bfloat16, the kernels do not)."""
    assert fused.dtype == reference.dtype and fused.shape == reference.shape
    if fused.dtype == torch.float32:
        torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(fused.float(), reference.float(), atol=1e-2, rtol=2**-7)


@pytest.fixture
def norm():
    layer = nn.LayerNorm(20)  # 20 channels: not a multiple of the vector width, so tails run too
    with torch.no_grad():
        layer.weight.normal_(), layer.bias.normal_()
    return layer


@pytest.mark.parametrize("dtype_in", DTYPES, ids=["in-fp32", "in-bf16"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_layer_norm_of_strided_rows(compiled, norm, dtype_in, dtype):
    track = (torch.randn(9, 11, 20) * 3 + 1).to(dtype_in)
    for x in (track, track.transpose(0, 1)[2:7]):  # contiguous, then rows of a transposed track
        fused = kernels.layer_norm(x, norm, dtype)
        assert_close(fused, pytorch_version(kernels.layer_norm, x, norm, dtype))
        out = torch.full(x.shape, float("nan"), dtype=dtype)
        assert kernels.layer_norm(x, norm, dtype, out=out) is out and torch.equal(out, fused)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_layer_norm_channels_first(compiled, norm, dtype):
    x = torch.randn(20, 37).to(dtype)  # 37 positions: whole vectors and a tail
    fused = kernels.layer_norm_channels_first(x, norm, dtype)
    assert fused.shape == (37, 20)
    assert_close(fused, pytorch_version(kernels.layer_norm_channels_first, x, norm, dtype))
    assert_close(fused, kernels.layer_norm(x.t()[None].float().contiguous(), norm, dtype)[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared-bias", "bias-per-row"])
def test_softmax_with_bias(compiled, dtype, shared):
    logits = (torch.randn(3, 5, 21) * 4).to(dtype)
    bias = torch.randn(1 if shared else 3, 5, 21).to(dtype)
    bias[..., 15:] = -1e9  # masked keys
    fused = kernels.softmax_with_bias(logits.clone(), bias, dtype)
    reference = pytorch_version(kernels.softmax_with_bias, logits.clone(), bias, dtype)
    assert_close(fused, reference)
    assert not fused[..., 15:].any()
    torch.testing.assert_close(fused.float().sum(-1), torch.ones(3, 5), atol=2e-2 if dtype == torch.bfloat16 else 1e-6,
                               rtol=0)  # fmt: skip
    same = logits.clone()  # in the logits' dtype the weights overwrite the logits
    assert kernels.softmax_with_bias(same, bias, dtype).data_ptr() == same.data_ptr()
    float_weights = kernels.softmax_with_bias(logits.clone(), bias, torch.float32)
    assert float_weights.dtype == torch.float32


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_gated_operand_into_a_slice_of_rows(compiled, dtype):
    C, L, rows = 20, 9, slice(3, 6)
    projected = torch.randn(3 * L, 2 * C).to(dtype)
    mask = torch.rand(3 * L) > 0.3
    results = []
    for version in (lambda f, *a: f(*a), pytorch_version):
        operand = torch.full((C, L, L), 7.0, dtype=dtype)
        for m in (mask, None):
            version(kernels.gated_operand, projected, m, operand[:, rows].flatten(1))
            results.append(operand.clone())
    for fused, reference in zip(results[:2], results[2:]):
        assert_close(fused, reference)
    assert (results[0][:, :3] == 7).all() and (results[0][:, 6:] == 7).all()  # other rows untouched
    assert not results[0][:, rows].flatten(1)[:, ~mask].any()


@pytest.mark.parametrize("value_dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain"])
def test_residual_add(compiled, value_dtype, gated):
    residual = torch.randn(7, 9, 20).transpose(0, 1)  # rows strided, as the transposed tracks
    value, gate = torch.randn(9, 7, 20).to(value_dtype), torch.randn(9, 7, 20).to(value_dtype)
    fused, reference = residual.clone(), residual.clone()  # clones keep the strides
    assert fused.stride() == residual.stride()
    kernels.add_(fused, value, gate if gated else None)
    pytorch_version(kernels.add_, reference, value, gate if gated else None)
    torch.testing.assert_close(fused, reference, atol=1e-5 if value_dtype == torch.float32 else 2e-2, rtol=1e-5)
    assert not torch.equal(fused, residual)


def test_whole_head_with_and_without_the_kernels(compiled):
    head = randomise(RotaFormer(TINY), seed=7)
    x, mask = torch.randn(2, 23, TINY.input_dim), torch.arange(23) < torch.tensor([[23], [15]])
    for threads in (1, 2):
        head.chunk_threads = threads
        fused = run(head.pair_logits, x, mask)
        reference = pytorch_version(run, head.pair_logits, x, mask)
        torch.testing.assert_close(fused, reference, atol=1e-5 * float(reference.abs().max()), rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_parity_with_the_original_with_and_without_the_kernels(compiled, parity_dir, dtype):
    head = copy_of(load_ss_head_h5(parity_dir / "sshead_tiny.h5"), dtype=dtype)
    expected = np.load(parity_dir / "sshead_tiny_expected.npz")
    atol = 1e-3 if dtype == torch.float32 else 0.25  # bf16: as tests/heads/test_ss.py
    for i in range(len(expected["lengths"])):
        reps = torch.from_numpy(expected[f"input_{i}"])
        for logits in (run(head, reps), pytorch_version(run, head, reps)):
            np.testing.assert_allclose(logits.numpy(), expected[f"logits_{i}"], atol=atol, rtol=0)


def test_kernels_let_go_of_the_gil(compiled):
    """While a kernel runs on another thread, this thread keeps running Python."""
    logits, bias = torch.randn(40, 400, 400), torch.zeros(1, 400, 400)
    ticks = 0
    worker = threading.Thread(target=lambda: [kernels.softmax_with_bias(logits, bias, torch.float32) for _ in range(5)])
    worker.start()
    while worker.is_alive():
        ticks += 1
    worker.join()
    # Holding the GIL, the kernel would leave this loop a tick per switch interval at most.
    assert ticks > 1000


# A fresh process per case: the kernels are loaded once per process.
LOAD = r"""
import json, warnings
import torch
from protrna import kernels
from protrna.heads.rotaformer import RotaFormerHead, RotaFormerConfig
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    available = kernels.available()
head = RotaFormerHead(RotaFormerConfig(input_dim=8, num_blocks=1)).eval()
with torch.inference_mode():
    shape = list(head.pair_logits(torch.randn(1, 6, 8)).shape)
print(json.dumps({"available": available, "warnings": [str(w.message) for w in caught], "shape": shape,
                  "directory": str(kernels.build_directory())}))
"""


def load_in_fresh_process(tmp_path, **env_changes) -> dict:
    env = dict(os.environ, PROTRNA_EXTENSIONS_DIR=str(tmp_path / "extensions"), **env_changes)
    done = subprocess.run([sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_no_extension_setting_uses_pytorch_and_builds_nothing(tmp_path):
    seen = load_in_fresh_process(tmp_path, PROTRNA_NO_EXTENSION="1")
    assert seen == {**seen, "available": False, "warnings": [], "shape": [1, 6, 6]}
    assert not (tmp_path / "extensions").exists()


def test_failed_build_falls_back_with_one_warning_and_is_not_retried(tmp_path):
    seen = load_in_fresh_process(tmp_path, CXX=str(tmp_path / "no-such-compiler"))
    assert not seen["available"] and seen["shape"] == [1, 6, 6]
    (warning,) = seen["warnings"]
    assert "could not be built" in warning and "delete" in warning
    assert (tmp_path / "extensions").exists() and any((tmp_path / "extensions").glob("*/build-failed.txt"))
    again = load_in_fresh_process(tmp_path)  # a working compiler now, but the failure is remembered
    assert not again["available"] and len(again["warnings"]) == 1


def test_build_over_its_time_limit_falls_back(tmp_path):
    seen = load_in_fresh_process(tmp_path, PROTRNA_EXTENSION_BUILD_TIMEOUT="0.5")
    assert not seen["available"] and seen["shape"] == [1, 6, 6]
    assert "took over 0.5 s" in seen["warnings"][0]
