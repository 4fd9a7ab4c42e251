"""Model preparation and budgets: one check per setting, before any work, on a tiny model."""

import pytest
import torch

from protrna import ProtRNA
from protrna.cpu import onednn_supports
from protrna.runtime import (
    checked_device,
    checked_dtype,
    pack_if_owned,
    pair_budget,
    prepare_head,
    prepare_model,
    token_budget,
)
from protrna.runtime.defaults import CPU_MAX_PAIRS, CPU_MAX_TOKENS, GPU_MAX_PAIRS, GPU_MAX_TOKENS


def test_checked_device_names_the_problem():
    assert checked_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="'toaster' is not a device"):
        checked_device("toaster")
    beyond = torch.cuda.device_count()  # one index past the last GPU, or cuda:0 without any
    with pytest.raises(ValueError, match=f"sees {beyond} CUDA devices"):
        checked_device(f"cuda:{beyond}")


def test_checked_dtype():
    assert [checked_dtype(n) for n in ("float32", "bfloat16", "float16")] == [
        torch.float32, torch.bfloat16, torch.float16]
    assert checked_dtype(None) is None
    with pytest.raises(ValueError, match="float64"):
        checked_dtype("float64")


@pytest.mark.parametrize("budget, cpu, gpu", [(token_budget, CPU_MAX_TOKENS, GPU_MAX_TOKENS),
                                              (pair_budget, CPU_MAX_PAIRS, GPU_MAX_PAIRS)])
def test_budgets_default_per_device_and_refuse_nothing(budget, cpu, gpu):
    assert budget(None, torch.device("cpu")) == cpu
    assert budget(None, torch.device("cuda")) == gpu  # a device name alone: no GPU needed
    assert budget(7, torch.device("cuda")) == 7
    assert gpu > cpu  # GPUs want large batches
    for bad in (0, -3):
        with pytest.raises(ValueError, match="at least 1"):
            budget(bad, torch.device("cpu"))


def test_prepare_model_casts_a_callers_model_only_when_asked(tiny_model):
    same = prepare_model(tiny_model)
    assert same is tiny_model and same.dtype == torch.float32 and not same.training
    prepare_model(tiny_model, dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in tiny_model.parameters())
    with pytest.raises(ValueError, match="float16 is for GPUs"):
        prepare_model(tiny_model, dtype="float16", device="cpu")
    with pytest.raises(ValueError, match="not a device"):
        prepare_model(tiny_model, device="nowhere")


def test_prepare_model_loads_a_saved_directory_in_float32(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "lm")
    loaded = prepare_model(tmp_path / "lm", device="cpu")
    assert isinstance(loaded, ProtRNA) and loaded.dtype == torch.float32 and not loaded.training
    for (name, mine), (_, theirs) in zip(tiny_model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(mine, theirs), name
    with pytest.raises((ValueError, OSError), match="missing"):
        prepare_model(tmp_path / "missing", device="cpu")


def test_prepare_head_follows_the_language_model(tiny_model, tiny_head):
    head = prepare_head(tiny_head, like=tiny_model.to(torch.bfloat16))
    assert next(head.parameters()).dtype == torch.bfloat16 and not head.training


def test_pack_if_owned_gives_a_callers_model_its_layers_back(tiny_model):
    tokens = tiny_model.alphabet.get_batch_converter()(["GGAUCCUAGCAUGC", "ACGU"])
    with torch.no_grad():
        before = tiny_model(tokens, repr_layers=[2])["representations"][2]
    restore = pack_if_owned(tiny_model, owned=False, max_tokens=64)
    packs = onednn_supports(torch.float32)
    assert (restore is not None) == packs and getattr(tiny_model, "packed_for_cpu", False) == packs
    with torch.no_grad():
        packed = tiny_model(tokens, repr_layers=[2])["representations"][2]
    torch.testing.assert_close(packed, before, atol=1e-5, rtol=1e-5)  # packing changes speed, not results
    if restore is not None:
        restore()
        assert not tiny_model.packed_for_cpu
        with torch.no_grad():
            assert torch.equal(tiny_model(tokens, repr_layers=[2])["representations"][2], before)
    # A model the job loaded itself stays packed: nothing to give back.
    assert pack_if_owned(tiny_model, owned=True, max_tokens=64) is None
