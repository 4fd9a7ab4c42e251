import copy

import numpy as np
import pytest
import torch
from transformers import EsmForMaskedLM, EsmTokenizer

from protrna import ProtRNA
from protrna.weights.keras_h5 import load_lm_h5

from tests.devices import DEVICES, NEEDS_CUDA


@pytest.fixture(scope="module")
def parity(parity_dir):
    return load_lm_h5(parity_dir / "lm_tiny.h5"), np.load(parity_dir / "lm_tiny_expected.npz")


def test_converted_fixture_has_the_file_shape(parity):
    model, expected = parity
    assert (model.num_layers, model.embed_dim, model.attention_heads) == (
        int(expected["num_layers"]), int(expected["embed_dim"]), int(expected["attention_heads"]))
    assert model.lm.config.token_dropout is False


@pytest.mark.parametrize("device", DEVICES)
def test_reproduces_original_tensorflow_outputs(parity, device):
    model, expected = parity
    model = copy.deepcopy(model).to(device)
    tokens = model.alphabet.get_batch_converter()(list(expected["sequences"]))
    with torch.no_grad():
        out = model(tokens.to(device), repr_layers=[0, 1, 2], need_head_weights=True)
    np.testing.assert_allclose(out["logits"].cpu().numpy(), expected["logits"], atol=1e-4, rtol=0)
    for layer in (0, 1, 2):
        np.testing.assert_allclose(
            out["representations"][layer].cpu().numpy(), expected[f"repr_{layer}"], atol=1e-4, rtol=0)
    real = tokens.numpy() != model.alphabet.padding_idx
    pair = real[:, None, None, :, None] & real[:, None, None, None, :]
    attentions = out["attentions"].cpu().numpy()
    np.testing.assert_allclose(attentions * pair, expected["attentions"] * pair, atol=1e-5, rtol=0)
    assert not attentions[~np.broadcast_to(pair, attentions.shape)].any(), "padded attention must be zero"


def test_only_requested_layers_are_returned(tiny_model):
    tokens = tiny_model.alphabet.get_batch_converter()(["ACGU"])
    out = tiny_model(tokens, repr_layers=[1])
    assert set(out["representations"]) == {1}
    assert "attentions" not in out
    with pytest.raises(ValueError, match="outside"):
        tiny_model(tokens, repr_layers=[3])


def test_padding_does_not_change_a_sequence(tiny_model):
    convert = tiny_model.alphabet.get_batch_converter()
    with torch.no_grad():
        alone = tiny_model(convert(["GGAC"]), repr_layers=[2])["representations"][2]
        batched = tiny_model(convert(["GGAC", "ACGUACGUAA"]), repr_layers=[2])["representations"][2]
    torch.testing.assert_close(batched[0, :6], alone[0], atol=1e-5, rtol=0)


def test_save_pretrained_round_trip_and_plain_transformers(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    tokens = tiny_model.alphabet.get_batch_converter()(["ACGUN", "GU"])
    with torch.no_grad():
        reference = tiny_model(tokens)["logits"]
        again = ProtRNA.from_pretrained(tmp_path)(tokens)["logits"]
        plain = EsmForMaskedLM.from_pretrained(tmp_path).eval()(
            input_ids=tokens, attention_mask=tokens.ne(1).long()).logits
    torch.testing.assert_close(again, reference)
    torch.testing.assert_close(plain, reference, atol=1e-5, rtol=0)
    # The saved tokenizer maps lower-case RNA to the RNA tokens, exactly like the batch converter.
    hf_ids = EsmTokenizer.from_pretrained(tmp_path)(["acgux", "gu"], padding=True)["input_ids"]
    assert hf_ids == [[0, 33, 36, 35, 34, 37, 2], [0, 35, 34, 2, 1, 1, 1]]


@pytest.mark.parametrize(
    "device, packed",
    [("cpu", False), ("cpu", True), pytest.param("cuda", False, marks=NEEDS_CUDA)],
    ids=["cpu", "cpu-packed", "cuda"],
)
def test_bfloat16_stays_close_to_original_tensorflow_outputs(parity, device, packed):
    """The speed path of ``protrna embed --dtype bfloat16``: bf16 weights (and, on CPUs with oneDNN,
    packed linear layers) give the original's fp32 outputs up to bf16 rounding: on average within 2 % of
    each tensor's spread (at most 10 %), and every token's representation pointing the same way."""
    from protrna.cpu import pack_for_cpu_inference

    model, expected = parity
    bf16 = copy.deepcopy(model).to(device=device, dtype=torch.bfloat16).eval()
    if packed and pack_for_cpu_inference(bf16, rows_hint=64) is None:
        pytest.skip("oneDNN packed linear layers are not available in this PyTorch build")
    tokens = bf16.alphabet.get_batch_converter()(list(expected["sequences"]))
    with torch.inference_mode():
        out = bf16(tokens.to(device), repr_layers=[2])
    real = tokens.numpy() != bf16.alphabet.padding_idx
    for got, want in ((out["logits"], expected["logits"]), (out["representations"][2], expected["repr_2"])):
        got, want = got.float().cpu().numpy()[real], want[real]
        error = np.abs(got - want) / want.std()
        assert error.mean() < 0.02 and error.max() < 0.1, (error.mean(), error.max())
        cosine = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
        assert cosine.min() > 0.999
