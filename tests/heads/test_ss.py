"""The RotaFormer head as the original's users call it (``head(reps, lengths=...)``, BOS/EOS
slots, (L, L) for one RNA): parity with the original TensorFlow head, padded batches, chunks,
threads, half precision, saving, input checks and training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from protrna.heads import RotaFormer
from tests.devices import DEVICES
from tests.heads.common import TINY, copy_of, randomise, run


# ---- the whole head against the original ------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_reproduces_original_tensorflow_logits(parity, grad, device, attention_path):
    head, expected = parity
    head = copy_of(head, device)
    assert head.config.num_blocks == 2 and head.config.threshold == 0.25
    for i, length in enumerate(expected["lengths"]):
        logits = run(head, torch.from_numpy(expected[f"input_{i}"]).to(device), grad=grad)
        assert logits.shape == (length, length)
        np.testing.assert_allclose(logits.cpu().numpy(), expected[f"logits_{i}"], atol=1e-3, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_padded_batch_gives_each_sequence_its_own_logits(parity, device, attention_path):
    head, expected = parity
    head = copy_of(head, device)
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
    half = copy_of(head, device, dtype)
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


def test_forward_is_pair_logits_without_the_bos_and_eos_slots(parity):
    head, expected = parity
    reps = torch.from_numpy(expected["input_0"])  # (1, 19, 1280): BOS, 17 nucleotides, EOS
    with torch.inference_mode():
        one = head(reps)
        batched = head.pair_logits(reps[:, 1:-1])
    assert one.shape == (17, 17) and batched.shape == (1, 17, 17)  # (L, L) for one RNA, as the original
    torch.testing.assert_close(one, batched[0], atol=0, rtol=0)
    # Lengths become the mask; whatever sits in the BOS/EOS slots never reaches the logits.
    batch = torch.zeros(2, 19, 1280)
    batch[0], batch[1, :10] = reps[0], reps[0, :10]
    batch[:, 0], batch[:, -1] = 7.0, -7.0
    with torch.inference_mode():
        logits = head(batch, lengths=torch.tensor([17, 9]))
        masked = head.pair_logits(batch[:, 1:-1], torch.arange(17) < torch.tensor([[17], [9]]))
    torch.testing.assert_close(logits, masked, atol=0, rtol=0)
    np.testing.assert_allclose(logits[0].numpy(), expected["logits_0"], atol=1e-3, rtol=0)
