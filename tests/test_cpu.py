import pytest
import torch

from protrna.cpu import PackedLinear, onednn_available, pack_for_cpu_inference

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN linear ops")


@needs_onednn
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 2e-5), (torch.bfloat16, 0.1)])
def test_packed_model_gives_the_same_outputs_and_restores(tiny_model, dtype, atol):
    model = tiny_model.to(dtype)
    tokens = model.alphabet.get_batch_converter()(["ACGUACGGGU", "GGAUC"])
    with torch.inference_mode():
        before = model(tokens, repr_layers=[1, 2])
        restore = pack_for_cpu_inference(model, rows_hint=32)
        assert restore is not None and model.packed_for_cpu
        assert isinstance(model.lm.esm.encoder.layer[0].attention.self.query, PackedLinear)
        packed = model(tokens, repr_layers=[1, 2])
        restore()
        after = model(tokens, repr_layers=[2])
    assert isinstance(model.lm.esm.encoder.layer[0].attention.self.query, torch.nn.Linear)
    for layer in (1, 2):
        torch.testing.assert_close(packed["representations"][layer].float(),
                                   before["representations"][layer].float(), atol=atol, rtol=0)
    torch.testing.assert_close(after["representations"][2], before["representations"][2])


@needs_onednn
def test_packing_twice_is_a_no_op(tiny_model):
    assert pack_for_cpu_inference(tiny_model) is not None
    assert pack_for_cpu_inference(tiny_model) is None
