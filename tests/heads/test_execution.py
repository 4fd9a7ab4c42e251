"""The execution path (:mod:`protrna.execution`: in place, chunks of rows, worker threads, oneDNN)
against the plain maths (:mod:`protrna.heads.rotaformer`), update by update and for the whole
head, padded batches included; and what importing the package leaves alone."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from protrna import execution
from protrna.heads.rotaformer import EvoformerBlock, RotaFormerHead
from tests.devices import DEVICES
from tests.heads.common import TINY, randomise

# float32 in both paths; they differ in the order of sums only.
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


def plain(call, *args):
    with torch.enable_grad():  # the training path
        out = call(*args)
    return tuple(t.detach() for t in out) if isinstance(out, tuple) else out.detach()


def fast(call, *args):
    with torch.inference_mode():
        out = call(*args)
    return tuple(t.clone() for t in out) if isinstance(out, tuple) else out.clone()


def inputs(device: str):
    """Three sequences of 9, the last two padded after 6 and 2, and their single rows."""
    generator = torch.Generator().manual_seed(2)
    m = torch.randn(3, 9, TINY.single_dim, generator=generator).to(device)
    z = torch.randn(3, 9, 9, TINY.pair_dim, generator=generator).to(device)
    mask = (torch.arange(9)[None, :] < torch.tensor([9, 6, 2])[:, None]).to(device)
    return m, z, mask


def assert_close_inside(out: torch.Tensor, expected: torch.Tensor, mask: torch.Tensor) -> None:
    """Equal on every real position (padded ones carry values no one reads)."""
    for b, n in enumerate(mask.sum(1).tolist()):
        torch.testing.assert_close(out[b, :n, :n], expected[b, :n, :n], **TOLERANCE)


UPDATES = ["row_attention", "single_transition", "outer_product_mean", "triangle_multiplication_outgoing",
           "triangle_multiplication_incoming", "triangle_attention_starting", "triangle_attention_ending",
           "pair_transition"]  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk_size", [2, 4, 9])
@pytest.mark.parametrize("update", UPDATES)
def test_each_update_equals_the_plain_maths(update, chunk_size, device, attention_path):
    block = randomise(EvoformerBlock(TINY), seed=4).to(device)
    module = getattr(block, update)
    m, z, mask = inputs(device)
    if update == "row_attention":
        expected = m + plain(module, m, z, mask)
        out = m + fast(execution.row_attention, module, m, z, mask, chunk_size)
    elif update == "single_transition":
        expected, out = m + plain(module, m), m + fast(execution.transition, module, m)
    elif update == "outer_product_mean":
        expected = z + plain(module, m)
        out = fast(execution.outer_product_mean, module, m, z.clone(), chunk_size)
    elif update == "pair_transition":
        expected = z + plain(module, z)
        out = fast(execution.pair_transition, module, z.clone(), chunk_size)
    else:
        run = execution.triangle_multiplication if "multiplication" in update else execution.triangle_attention
        expected = z + plain(module, z, mask)
        out = fast(run, module, z.clone(), mask, chunk_size)
    if out.dim() == 3:  # the single row: every real position
        for b, n in enumerate(mask.sum(1).tolist()):
            torch.testing.assert_close(out[b, :n], expected[b, :n], **TOLERANCE)
    else:
        assert_close_inside(out, expected, mask)


@pytest.mark.parametrize("device", DEVICES)
def test_block_and_embedding_equal_the_plain_maths(device, attention_path):
    head = randomise(RotaFormerHead(TINY), seed=5).to(device)
    m, z, mask = inputs(device)
    m_plain, z_plain = plain(head.blocks[0], m, z, mask)
    m_fast, z_fast = fast(execution.evoformer_block, head.blocks[0], m.clone(), z.clone(), mask, 4)
    assert_close_inside(z_fast, z_plain, mask)
    torch.testing.assert_close(m_fast[0], m_plain[0], **TOLERANCE)
    x = torch.randn(2, 9, TINY.input_dim, device=device)
    for a, b in zip(fast(execution.embedding, head.embedding, x, 4), plain(head.embedding, x)):
        torch.testing.assert_close(a, b, **TOLERANCE)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("threads", [1, 2], ids=["one-thread", "chunk-threads"])
def test_whole_head_equals_the_plain_maths(device, threads, attention_path):
    head = randomise(RotaFormerHead(TINY), seed=6).to(device)
    head.chunk_threads = threads
    x = torch.randn(3, 9, TINY.input_dim, device=device)
    _, _, mask = inputs(device)
    for batch_mask in (mask, None):
        expected = plain(head.pair_logits, x, batch_mask)
        for chunk_size in (None, 2):
            with torch.inference_mode():
                out = head.pair_logits(x, batch_mask, chunk_size=chunk_size)
            assert out.shape == (3, 9, 9)
            # The logits reach ~24 here, where one float32 ulp is 2e-6: within 1e-5 of their scale.
            scale = float(expected.abs().max())
            torch.testing.assert_close(out, expected, atol=1e-5 * scale, rtol=0)
    assert not out.requires_grad and expected.grad_fn is None


def test_pair_logits_takes_the_fast_path_only_without_gradients(monkeypatch):
    head = randomise(RotaFormerHead(TINY))
    calls = []
    monkeypatch.setattr(execution, "evoformer_block", lambda *args: calls.append(1) or args[1:3])
    x = torch.randn(1, 5, TINY.input_dim)
    with torch.no_grad():
        head.pair_logits(x)
    assert len(calls) == TINY.num_blocks
    logits = head.pair_logits(x)  # gradients on: the plain maths, differentiable
    assert len(calls) == TINY.num_blocks and logits.requires_grad
    with pytest.raises(RuntimeError, match="inference_mode"):
        execution.pair_logits(head, x, None)


def test_pair_logits_rejects_malformed_inputs():
    head = RotaFormerHead(TINY).eval()
    with pytest.raises(ValueError, match=r"x must be \(batch, nucleotides, 12\)"):
        head.pair_logits(torch.randn(2, 7, 5))
    with pytest.raises(ValueError, match="mask must be bool"):
        head.pair_logits(torch.randn(2, 7, 12), torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be bool"):
        head.pair_logits(torch.randn(2, 7, 12), torch.ones(2, 7))
    with pytest.raises(ValueError, match="without nucleotides"):
        head.pair_logits(torch.randn(2, 7, 12), torch.tensor([[True] * 7, [False] * 7]))
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        head.pair_logits(torch.randn(1, 7, 12), chunk_size=0)


# Importing the package, the head and its execution must change no process-wide torch setting,
# and the CPU probes (which flip a setting while they run) wait for the first forward pass.
IMPORT_PROBE = r"""
import json, torch

def flags():
    cudnn = torch.backends.cudnn
    return {
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "mkldnn_enabled": torch.backends.mkldnn.enabled,
        "mkldnn_fp32_precision": getattr(torch.backends.mkldnn.matmul, "fp32_precision", None),
        "cudnn_allow_tf32": cudnn.allow_tf32,
        "cudnn_conv_fp32_precision": getattr(getattr(cudnn, "conv", None), "fp32_precision", None),
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "grad_enabled": torch.is_grad_enabled(),
        "default_dtype": str(torch.get_default_dtype()),
    }

before = flags()
import protrna, protrna.heads.ss, protrna.heads.rotaformer, protrna.execution, protrna.cpu
import protrna.weights.keras_ss_head, protrna.pretrained, protrna.runtime, protrna.fold, protrna.embed
after = flags()
probes = {
    "onednn_available": protrna.cpu.onednn_available.cache_info().currsize,
    "onednn_float32_matmul_is_exact": protrna.execution.onednn_float32_matmul_is_exact.cache_info().currsize,
    "kernels_loaded": protrna.kernels.extension.cache_info().currsize,
}
print(json.dumps({"before": before, "after": after, "probes_run": probes}))
"""


def test_importing_changes_no_torch_setting_and_runs_no_probe():
    done = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["after"] == seen["before"]
    assert seen["probes_run"] == {"onednn_available": 0, "onednn_float32_matmul_is_exact": 0, "kernels_loaded": 0}


def test_a_forward_pass_restores_every_setting_it_changes():
    head = randomise(RotaFormerHead(TINY))
    head.chunk_threads = 2
    before = (torch.get_num_threads(), getattr(torch.backends.mkldnn.matmul, "fp32_precision", None))
    with torch.inference_mode():
        head.pair_logits(torch.randn(1, 6, TINY.input_dim))
    assert (torch.get_num_threads(), getattr(torch.backends.mkldnn.matmul, "fp32_precision", None)) == before
