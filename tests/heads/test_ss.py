"""The RotaFormer head: parity with the original TensorFlow head, and each Evoformer part against
a plain einsum transcription of the original's math (OpenFold's ``test_compare`` spirit)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from protrna.heads import RotaFormer, RotaFormerConfig, ss
from protrna.heads.ss import (
    EvoformerBlock,
    GatedAttention,
    OuterProductMean,
    RowAttentionWithPairBias,
    TriangleAttention,
    TriangleMultiplication,
)
from protrna.weights.keras_ss_head import load_ss_head_h5
from tests.devices import DEVICES

TINY = RotaFormerConfig(input_dim=12, single_dim=24, pair_dim=16, num_blocks=2, msa_heads=3, pair_heads=2,
                        head_width=8, outer_dim=4, max_relative_distance=3)  # fmt: skip


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared CPU an OpenMP barrier
    waiting for a descheduled thread turns milliseconds into seconds. The chunk-thread path is
    tested explicitly (``head.chunk_threads``)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(params=["per-head", "fused"])
def attention_path(request, monkeypatch):
    """Attention as the CPU runs it (per head, a few rows at a time) or as GPUs run it (all heads
    in one ``scaled_dot_product_attention``), both here on the CPU."""
    monkeypatch.setattr(ss, "_SDPA_ON_CPU", request.param == "fused")
    return request.param


@pytest.fixture(scope="module")
def parity(parity_dir):
    return load_ss_head_h5(parity_dir / "sshead_tiny.h5"), np.load(parity_dir / "sshead_tiny_expected.npz")


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values everywhere, LayerNorm scales and offsets included (defaults hide bugs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return module.eval()


def run(module, *args, grad: bool = False, **kwargs):
    """Call with autograd off (the in-place inference path) or on (the autograd-safe path)."""
    context = torch.enable_grad() if grad else torch.inference_mode()
    with context:
        out = module(*args, **kwargs)
    return tuple(t.detach().clone() for t in out) if isinstance(out, tuple) else out.detach().clone()


# ---- the whole head against the original ------------------------------------------------------


def on(device: str, head: RotaFormer, dtype: torch.dtype = torch.float32) -> RotaFormer:
    """A copy of ``head`` on ``device`` in ``dtype`` (the module-scoped fixture stays as it is)."""
    copy = RotaFormer(head.config)
    copy.load_state_dict(head.state_dict())
    return copy.to(device=device, dtype=dtype).eval()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_reproduces_original_tensorflow_logits(parity, grad, device, attention_path):
    head, expected = parity
    head = on(device, head)
    assert head.config.num_blocks == 2 and head.config.threshold == 0.25
    for i, length in enumerate(expected["lengths"]):
        logits = run(head, torch.from_numpy(expected[f"input_{i}"]).to(device), grad=grad)
        assert logits.shape == (length, length)
        np.testing.assert_allclose(logits.cpu().numpy(), expected[f"logits_{i}"], atol=1e-3, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_padded_batch_gives_each_sequence_its_own_logits(parity, device, attention_path):
    head, expected = parity
    head = on(device, head)
    singles = [torch.from_numpy(expected[f"input_{i}"])[0].to(device) for i in range(2)]
    lengths = [s.shape[0] - 2 for s in singles]  # 17 and 40 nucleotides
    T = max(s.shape[0] for s in singles)
    # Short one first, and garbage (not zeros) in its padding, which must not matter.
    batch = torch.randn(2, T, singles[0].shape[1], device=device) * 5
    for b, single in enumerate(singles):
        batch[b, : single.shape[0]] = single
    alone = [run(head, s[None]) for s in singles]
    for chunk_size in (None, 7):
        logits = run(head, batch, torch.tensor(lengths), chunk_size=chunk_size)
        assert logits.shape == (2, T - 2, T - 2)
        for b, n in enumerate(lengths):
            torch.testing.assert_close(logits[b, :n, :n], alone[b], atol=1e-4, rtol=0)
            np.testing.assert_allclose(logits[b, :n, :n].cpu().numpy(), expected[f"logits_{b}"], atol=1e-3, rtol=0)
            assert not logits[b, n:].any() and not logits[b, :, n:].any()


def test_chunked_low_memory_path_equals_plain_path(parity):
    head, expected = parity
    reps = torch.from_numpy(expected["input_1"])  # L = 40
    plain = run(head, reps, chunk_size=40)
    for chunk_size in (1, 3, 16):
        torch.testing.assert_close(run(head, reps, chunk_size=chunk_size), plain, atol=1e-4, rtol=0)
    torch.testing.assert_close(run(head, reps, chunk_size=5, grad=True), plain, atol=1e-4, rtol=0)


def test_chunks_on_worker_threads_equal_one_thread(parity):
    head, expected = parity
    reps = torch.from_numpy(expected["input_1"])
    batch = torch.cat([reps, torch.cat([torch.from_numpy(expected["input_0"]), torch.zeros(1, 23, 1280)], 1)])
    lengths = torch.tensor([40, 17])
    alone = run(head, batch, lengths, chunk_size=6)
    try:
        head.chunk_threads = 3
        for chunk_size in (None, 6):
            torch.testing.assert_close(run(head, batch, lengths, chunk_size=chunk_size), alone, atol=1e-4, rtol=0)
        with torch.no_grad():  # the workers take the caller's grad mode
            torch.testing.assert_close(head(batch, lengths, chunk_size=4), alone, atol=1e-4, rtol=0)
    finally:
        head.chunk_threads = None
    assert torch.get_num_threads() == 1, "the intra-op thread count must be restored"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_stays_close_to_float32(parity, device, dtype, attention_path):
    head, expected = parity
    half = on(device, head, dtype)
    singles = [torch.from_numpy(expected[f"input_{i}"]).to(device) for i in range(2)]  # 17 and 40 nt
    logits = run(half, singles[1])
    assert logits.dtype == torch.float32
    # The logits span about +-20 here; bf16 keeps 8 bits of mantissa.
    np.testing.assert_allclose(logits.cpu().numpy(), expected["logits_1"], atol=0.25, rtol=0)
    # Padded keys are masked in this dtype too (float16 cannot hold the usual mask value).
    batch = torch.zeros(2, *singles[1].shape[1:], device=device)
    batch[0], batch[1, : singles[0].shape[1]] = singles[1][0], singles[0][0]
    logits = run(half, batch, torch.tensor([40, 17]))
    np.testing.assert_allclose(logits[1, :17, :17].cpu().numpy(), expected["logits_0"], atol=0.25, rtol=0)


def test_save_and_load_round_trip(parity, tmp_path):
    head, expected = parity
    head.save_pretrained(tmp_path / "head")
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    assert config["model_type"] == "protrna-rotaformer" and config["num_blocks"] == 2
    again = RotaFormer.from_pretrained(tmp_path / "head")
    assert again.config == head.config and not again.training
    reps = torch.from_numpy(expected["input_0"])
    torch.testing.assert_close(run(again, reps), run(head, reps), atol=0, rtol=0)

    head_bf16 = RotaFormer.from_pretrained(tmp_path / "head", dtype=torch.bfloat16)
    head_bf16.save_pretrained(tmp_path / "bf16")
    assert RotaFormer.from_pretrained(tmp_path / "bf16").dtype == torch.bfloat16


def test_from_pretrained_refuses_other_directories(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "esm", "hidden_size": 1280}))
    with pytest.raises(ValueError, match="not a RotaFormer head"):
        RotaFormer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        RotaFormer.from_pretrained(tmp_path / "missing")


def test_rejects_malformed_inputs():
    head = RotaFormer(TINY).eval()
    with pytest.raises(ValueError, match="with BOS and EOS"):
        head(torch.randn(2, 7, 5))
    with pytest.raises(ValueError, match="nothing between BOS and EOS"):
        head(torch.randn(1, 2, 12))
    with pytest.raises(ValueError, match="lengths must lie in 1..5"):
        head(torch.randn(2, 7, 12), lengths=torch.tensor([5, 6]))
    with pytest.raises(ValueError, match="2 entries for a batch of 3"):
        head(torch.randn(3, 7, 12), lengths=torch.tensor([5, 4]))
    with pytest.raises(ValueError, match="whole numbers"):  # not silently rounded down to 4
        head(torch.randn(2, 7, 12), lengths=[4.5, 5.0])
    with pytest.raises(ValueError, match="whole numbers"):
        head(torch.randn(2, 7, 12), lengths=[[4], [5]])
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        head(torch.randn(1, 7, 12), chunk_size=0)
    assert head(torch.randn(2, 7, 12), lengths=[4.0, 5.0]).shape == (2, 5, 5)  # whole floats are fine


def test_training_backward_with_and_without_checkpointing(attention_path):
    head = randomise(RotaFormer(TINY), seed=3).train()
    reps, lengths = torch.randn(2, 9, 12), torch.tensor([7, 5])
    target = (torch.rand(2, 7, 7) > 0.8).float()
    gradients = []
    for checkpointing in (False, True):
        head.zero_grad()
        head.gradient_checkpointing = checkpointing
        logits = head(reps, lengths)
        F.binary_cross_entropy_with_logits(logits, target).backward()
        gradients.append({n: p.grad.clone() for n, p in head.named_parameters()})
    assert all(g.abs().sum() > 0 for g in gradients[0].values()), "every parameter must get a gradient"
    for name, grad in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], grad, atol=1e-6, rtol=1e-4, msg=name)


# ---- each Evoformer part against a plain transcription of the original ----------------------


def layer_norm(layer: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * layer.weight + layer.bias


def dense(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x @ layer.weight.T + (layer.bias if layer.bias is not None else 0)


def reference_attention(att: GatedAttention, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The original's ``Attention``: kernels (in, heads, width) and (heads, width, out)."""
    H, W = att.heads, att.head_width
    to_keras = lambda layer: layer.weight.T.reshape(-1, H, W)  # noqa: E731
    q = torch.einsum("bqa,ahc->bqhc", x, to_keras(att.query)) / math.sqrt(W)
    k = torch.einsum("bka,ahc->bkhc", x, to_keras(att.key))
    v = torch.einsum("bka,ahc->bkhc", x, to_keras(att.value))
    weights = torch.softmax(torch.einsum("bqhc,bkhc->bhqk", q, k) + bias, dim=-1)
    average = torch.einsum("bhqk,bkhc->bqhc", weights, v)
    gate = torch.sigmoid(torch.einsum("bqc,chv->bqhv", x, to_keras(att.gate)) + att.gate.bias.view(H, W))
    output_w = att.output.weight.T.reshape(H, W, -1)
    return torch.einsum("bqhc,hco->bqo", average * gate, output_w) + att.output.bias


def reference_triangle_multiplication(tm: TriangleMultiplication, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    x = layer_norm(tm.norm, z)
    pair = (mask[:, None] & mask[None, :])[..., None].float()
    a = dense(tm.left, x) * torch.sigmoid(dense(tm.left_gate, x)) * pair
    b = dense(tm.right, x) * torch.sigmoid(dense(tm.right_gate, x)) * pair
    out = torch.einsum("kjc,kic->ijc", a, b) if tm.incoming else torch.einsum("ikc,jkc->ijc", a, b)
    return z + dense(tm.output, layer_norm(tm.center_norm, out)) * torch.sigmoid(dense(tm.gate, x))


def reference_triangle_attention(ta: TriangleAttention, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    zz = z.transpose(0, 1) if ta.ending else z
    x = layer_norm(ta.norm, zz)
    bias = torch.einsum("qkc,ch->hqk", x, ta.pair_bias.weight.T)
    bias = bias.masked_fill(~mask, -1e9)[None]
    out = reference_attention(ta.attention, x, bias)
    return z + (out.transpose(0, 1) if ta.ending else out)


def reference_row_attention(ra: RowAttentionWithPairBias, m, z, mask) -> torch.Tensor:
    bias = torch.einsum("bqkc,ch->bhqk", layer_norm(ra.pair_norm, z), ra.pair_bias.weight.T)
    bias = bias.masked_fill(~mask[:, None, None, :], -1e9)
    return reference_attention(ra.attention, layer_norm(ra.norm, m), bias)


def reference_outer_product_mean(opm: OuterProductMean, m: torch.Tensor) -> torch.Tensor:
    x = layer_norm(opm.norm, m)
    left, right = dense(opm.left, x), dense(opm.right, x)
    n = opm.outer_dim
    output_w = opm.output.weight.T.reshape(n, n, -1)  # (c, e, f), as Keras stores it
    out = torch.einsum("bic,bje,cef->bijf", left, right, output_w) + opm.output.bias
    return out / (1 + 1e-3)


@pytest.fixture
def tracks():
    """Two pair tracks of 7, the second padded after 5, and their single rows."""
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(2, 7, 7, TINY.pair_dim, generator=generator)
    m = torch.randn(2, 7, TINY.single_dim, generator=generator)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 5])[:, None]
    return m, z, mask


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
@pytest.mark.parametrize("chunk_size", [1, 3, 7])
@pytest.mark.parametrize("incoming", [False, True], ids=["outgoing", "incoming"])
def test_triangle_multiplication_matches_einsum(tracks, incoming, chunk_size, grad):
    _, z, mask = tracks
    tm = randomise(TriangleMultiplication(TINY.pair_dim, incoming=incoming))
    out = run(tm, z.clone(), mask, chunk_size, grad=grad)
    for b, n in enumerate((7, 5)):
        expected = reference_triangle_multiplication(tm, z[b], mask[b]).detach()
        torch.testing.assert_close(out[b, :n, :n], expected[:n, :n], atol=1e-5, rtol=1e-5)
    # Padding changes nothing inside: the padded track equals its cropped self.
    cropped = run(tm, z[1:, :5, :5].clone(), None, chunk_size)
    torch.testing.assert_close(out[1, :5, :5], cropped[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
@pytest.mark.parametrize("chunk_size", [1, 3, 7])
@pytest.mark.parametrize("ending", [False, True], ids=["starting", "ending"])
def test_triangle_attention_matches_einsum(tracks, ending, chunk_size, grad, attention_path):
    _, z, mask = tracks
    ta = randomise(TriangleAttention(TINY, ending=ending))
    out = run(ta, z.clone(), mask, chunk_size, grad=grad)
    for b, n in enumerate((7, 5)):
        expected = reference_triangle_attention(ta, z[b], mask[b]).detach()
        torch.testing.assert_close(out[b, :n, :n], expected[:n, :n], atol=1e-5, rtol=1e-5)
    cropped = run(ta, z[1:, :5, :5].clone(), None, chunk_size)
    torch.testing.assert_close(out[1, :5, :5], cropped[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_row_attention_with_pair_bias_matches_einsum(tracks, grad, attention_path):
    m, z, mask = tracks
    ra = randomise(RowAttentionWithPairBias(TINY))
    out = run(ra, m, z, mask, 3, grad=grad)
    expected = reference_row_attention(ra, m, z, mask).detach()
    torch.testing.assert_close(out[0], expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, :5], expected[1, :5], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_outer_product_mean_matches_einsum(tracks, grad):
    m, z, _ = tracks
    opm = randomise(OuterProductMean(TINY))
    out = run(opm, m, z.clone(), 3, grad=grad)
    torch.testing.assert_close(out, z + reference_outer_product_mean(opm, m).detach(), atol=1e-5, rtol=1e-5)


def test_embedding_matches_one_hot_formula():
    head = randomise(RotaFormer(TINY))
    x = torch.randn(1, 9, TINY.input_dim)
    with torch.inference_mode():
        m, z = head.embedding(x, 4)
    emb = head.embedding
    position = torch.arange(9)
    one_hot = F.one_hot((position[:, None] - position[None, :] + 3).clamp(0, 6), 7).float()
    expected = dense(emb.left, x)[0, :, None] + dense(emb.right, x)[0, None, :] + dense(emb.relative_position, one_hot)
    torch.testing.assert_close(z[0], expected.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m, dense(emb.single, x).detach(), atol=1e-5, rtol=1e-5)


def test_block_is_the_same_in_inference_and_autograd_mode(tracks):
    m, z, mask = tracks
    block = randomise(EvoformerBlock(TINY))
    m_inf, z_inf = run(block, m.clone(), z.clone(), mask, 2)
    m_grad, z_grad = run(block, m.clone(), z.clone(), mask, 5, grad=True)
    torch.testing.assert_close(m_inf, m_grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z_inf, z_grad, atol=1e-5, rtol=1e-5)
