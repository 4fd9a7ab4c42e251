"""Each Evoformer part of :mod:`protrna.heads.rotaformer` against a plain einsum transcription
of the original's math (OpenFold's ``test_compare`` spirit), as the maths reads (``plain``, with
autograd on) and as :mod:`protrna.execution` runs it (in place, in chunks of rows)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from protrna import execution
from protrna.heads.rotaformer import (
    EvoformerBlock,
    GatedAttention,
    OuterProductMean,
    RotaFormerHead,
    RowAttentionWithPairBias,
    TriangleAttention,
    TriangleMultiplication,
)
from tests.heads.common import TINY, randomise

# The plain maths takes no chunks; the execution path is run at several chunk sizes.
PATHS = [("plain", None), ("execution", 1), ("execution", 3), ("execution", 7)]
PATH_IDS = ["plain", "execution-1", "execution-3", "execution-7"]


def updated_track(module, z: torch.Tensor, mask: torch.Tensor | None, path: str, chunk_size: int | None):
    """``z`` after the pair update ``module``: ``z + module(z, mask)`` (plain), or the execution
    path's in-place update of a copy of ``z``."""
    if path == "plain":
        with torch.enable_grad():
            return (z + module(z, mask)).detach()
    fast = execution.triangle_multiplication if isinstance(module, TriangleMultiplication) else execution.triangle_attention
    with torch.inference_mode():
        return fast(module, z.clone(), mask, chunk_size).clone()


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


@pytest.mark.parametrize("path, chunk_size", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("incoming", [False, True], ids=["outgoing", "incoming"])
def test_triangle_multiplication_matches_einsum(tracks, incoming, path, chunk_size):
    _, z, mask = tracks
    tm = randomise(TriangleMultiplication(TINY.pair_dim, incoming=incoming))
    out = updated_track(tm, z, mask, path, chunk_size)
    for b, n in enumerate((7, 5)):
        expected = reference_triangle_multiplication(tm, z[b], mask[b]).detach()
        torch.testing.assert_close(out[b, :n, :n], expected[:n, :n], atol=1e-5, rtol=1e-5)
    # Padding changes nothing inside: the padded track equals its cropped self.
    cropped = updated_track(tm, z[1:, :5, :5].contiguous(), None, path, chunk_size)
    torch.testing.assert_close(out[1, :5, :5], cropped[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path, chunk_size", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("ending", [False, True], ids=["starting", "ending"])
def test_triangle_attention_matches_einsum(tracks, ending, path, chunk_size, attention_path):
    _, z, mask = tracks
    ta = randomise(TriangleAttention(TINY, ending=ending))
    out = updated_track(ta, z, mask, path, chunk_size)
    for b, n in enumerate((7, 5)):
        expected = reference_triangle_attention(ta, z[b], mask[b]).detach()
        torch.testing.assert_close(out[b, :n, :n], expected[:n, :n], atol=1e-5, rtol=1e-5)
    cropped = updated_track(ta, z[1:, :5, :5].contiguous(), None, path, chunk_size)
    torch.testing.assert_close(out[1, :5, :5], cropped[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", ["plain", "execution"])
def test_row_attention_with_pair_bias_matches_einsum(tracks, path, attention_path):
    m, z, mask = tracks
    ra = randomise(RowAttentionWithPairBias(TINY))
    if path == "plain":
        with torch.enable_grad():
            out = ra(m, z, mask).detach()
    else:
        with torch.inference_mode():
            out = execution.row_attention(ra, m, z, mask, 3).clone()
    expected = reference_row_attention(ra, m, z, mask).detach()
    torch.testing.assert_close(out[0], expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, :5], expected[1, :5], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", ["plain", "execution"])
def test_outer_product_mean_matches_einsum(tracks, path):
    m, z, _ = tracks
    opm = randomise(OuterProductMean(TINY))
    if path == "plain":
        with torch.enable_grad():
            out = (z + opm(m)).detach()
    else:
        with torch.inference_mode():
            out = execution.outer_product_mean(opm, m, z.clone(), 3).clone()
    torch.testing.assert_close(out, z + reference_outer_product_mean(opm, m).detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", ["plain", "execution"])
def test_embedding_matches_one_hot_formula(path):
    head = randomise(RotaFormerHead(TINY))
    x = torch.randn(1, 9, TINY.input_dim)
    emb = head.embedding
    with torch.inference_mode():
        m, z = emb(x) if path == "plain" else execution.embedding(emb, x, 4)
    position = torch.arange(9)
    one_hot = F.one_hot((position[:, None] - position[None, :] + 3).clamp(0, 6), 7).float()
    expected = dense(emb.left, x)[0, :, None] + dense(emb.right, x)[0, None, :] + dense(emb.relative_position, one_hot)
    torch.testing.assert_close(z[0], expected.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m, dense(emb.single, x).detach(), atol=1e-5, rtol=1e-5)


def test_block_is_the_same_in_inference_and_autograd_mode(tracks):
    m, z, mask = tracks
    block = randomise(EvoformerBlock(TINY))
    with torch.inference_mode():
        m_inf, z_inf = (t.clone() for t in execution.evoformer_block(block, m.clone(), z.clone(), mask, 2))
    with torch.enable_grad():
        m_grad, z_grad = (t.detach() for t in block(m, z, mask))
    torch.testing.assert_close(m_inf, m_grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z_inf, z_grad, atol=1e-5, rtol=1e-5)


def test_config_refuses_an_even_kernel():
    with pytest.raises(ValueError, match="conv_kernel must be odd"):
        type(TINY)(conv_kernel=4)
