"""The feature cache behind train-ss and finetune: values, reuse, resumption, storage dtypes."""

import h5py
import numpy as np
import pytest
import torch

from protrna.model import ProtRNA
from protrna.train.features import (
    FeatureSettings,
    cached_features,
    distinct_sequences,
    lm_fingerprint,
)

SEQUENCES = ["GGGAAACUUCGGUUCCC", "acgtnNNAUGC", "GGGAAACUUCGGUUCCC", "A", "AUGGCUACGUAGCUAGCUAGGCUA" * 3]


def direct(model, sequence):
    """Reference: one sequence through the model, no batching, no cache."""
    with torch.no_grad():
        tokens = model.alphabet.get_batch_converter()([sequence])
        reps = model(tokens, repr_layers=[model.num_layers])["representations"][model.num_layers][0]
    return reps[1:-1], reps[0]


class CountingLM(ProtRNA):
    """A real ProtRNA that counts its forward calls and can be interrupted (as by Ctrl-C)."""

    def __init__(self, model, fail_at=-1):
        super().__init__(lm=model.lm)
        self.calls, self.fail_at = 0, fail_at

    def forward(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return super().forward(*args, **kwargs)


def test_values_equal_the_model_and_repeats_are_computed_once(tiny_model, tmp_path):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    settings = FeatureSettings(kinds=("per_tok", "mean", "bos"))
    cache = cached_features(tiny_model, SEQUENCES, tmp_path, settings, max_tokens=40, progress=False)
    assert cache.built and len(cache) == len(SEQUENCES)
    with h5py.File(cache.path) as h5:
        assert h5["lengths"].shape == (4,), "the repeated sequence is stored once"
    for i, sequence in enumerate(SEQUENCES):
        per_token, bos = direct(tiny_model, sequence)
        torch.testing.assert_close(cache.per_token(i), per_token, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache.pooled("mean")[i], per_token.mean(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache.pooled("bos")[i], bos, atol=1e-5, rtol=1e-5)
    cache.close()
    # The caller's model is left as it was: same weights, CPU packing undone.
    assert not getattr(tiny_model, "packed_for_cpu", False)
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_a_second_call_reuses_the_file_without_running_the_model(tiny_model, tmp_path):
    first = cached_features(tiny_model, SEQUENCES, tmp_path, progress=False)
    counting = CountingLM(tiny_model)
    again = cached_features(counting, SEQUENCES, tmp_path, progress=False)
    assert counting.calls == 0 and not again.built and again.path == first.path
    # Other input, other settings or another model: another file.
    other_input = cached_features(tiny_model, SEQUENCES[:2], tmp_path, progress=False)
    other_dtype = cached_features(tiny_model, SEQUENCES, tmp_path, FeatureSettings(storage_dtype="float16"),
                                  progress=False)
    torch.manual_seed(5)
    other_model = ProtRNA(tiny_model.config)
    other_lm = cached_features(other_model, SEQUENCES, tmp_path, progress=False)
    assert len({c.path for c in (first, other_input, other_dtype, other_lm)}) == 4
    assert lm_fingerprint(other_model) != lm_fingerprint(tiny_model)


def test_an_interrupted_build_resumes_where_it_stopped(tiny_model, tmp_path, monkeypatch):
    sequences = [f"GGAUCCUAGC{'A' * k}" for k in range(40)]
    reference = cached_features(tiny_model, sequences, tmp_path / "reference", max_tokens=64, progress=False)
    # Done flags are written per chunk: small chunks, and a stop (as by Ctrl-C) in a later one.
    monkeypatch.setattr("protrna.train.features._CHUNK", 8)
    with pytest.raises(KeyboardInterrupt):
        cached_features(CountingLM(tiny_model, fail_at=12), sequences, tmp_path / "run", max_tokens=64,
                        progress=False)
    partial = next((tmp_path / "run").glob("*.h5.partial"))
    with h5py.File(partial) as h5:
        done = int(h5["done"][:].sum())
    assert 0 < done < len(sequences)
    counting = CountingLM(tiny_model)
    resumed = cached_features(counting, sequences, tmp_path / "run", max_tokens=64, progress=False)
    assert resumed.built and not partial.exists()
    assert 0 < counting.calls, "the rest was computed"
    for i in range(len(sequences)):  # batched differently, so equal up to float rounding
        torch.testing.assert_close(resumed.per_token(i), reference.per_token(i), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype, tolerance", [("float16", 2e-3), ("bfloat16", 2e-2)])
def test_half_precision_storage(tiny_model, tmp_path, dtype, tolerance):
    exact = cached_features(tiny_model, SEQUENCES, tmp_path, progress=False)
    half = cached_features(tiny_model, SEQUENCES, tmp_path, FeatureSettings(storage_dtype=dtype), progress=False)
    with h5py.File(half.path) as h5:
        assert h5["per_tok"].dtype == (np.float16 if dtype == "float16" else np.uint16)
    for i in range(len(SEQUENCES)):
        values = half.per_token(i)
        assert values.dtype == torch.float32
        torch.testing.assert_close(values, exact.per_token(i), atol=tolerance * 4, rtol=tolerance)


def test_distinct_sequences_key_on_tokens():
    ids, rows = distinct_sequences(["ACGT", "acgu", "ACGN", "acgn"])
    assert rows.tolist() == [0, 0, 1, 1] and ids == [[33, 36, 35, 34], [33, 36, 35, 37]]
