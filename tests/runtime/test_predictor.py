"""StructurePredictor: language model in windows, the head on the whole RNA, batches that change
nothing, and a resumed job's skips that change nothing either."""

import numpy as np
import pytest

from protrna.heads.ss import RotaFormer, RotaFormerConfig
from protrna.runtime import StructurePredictor, load_predictor
from tests.devices import DEVICES
from tests.original import direct_probabilities

RECORDS = [(f"s{i}", "GGAUCCUAGCAUGCUUAGGC"[: 5 + 2 * i]) for i in range(8)]


def test_long_rna_uses_windows_for_the_lm_and_the_full_length_for_the_head(tiny_model, tiny_head):
    rng = np.random.default_rng(0)
    sequence = "".join(rng.choice(list("ACGU"), 600))
    predictor = StructurePredictor(tiny_model, tiny_head)
    (result,) = predictor.predict([("long", sequence)])
    assert result.probabilities.shape == (600, 600)
    np.testing.assert_allclose(result.probabilities, result.probabilities.T, atol=1e-6)
    # Bare sequences are named by position; one bare string is not a batch of letters.
    (bare,) = predictor.predict([sequence])
    assert bare.id == "#0" and np.array_equal(bare.probabilities, result.probabilities)
    with pytest.raises(TypeError, match="not one string"):
        list(predictor.predict(sequence))


@pytest.mark.parametrize("device", DEVICES)
def test_batched_head_equals_one_at_a_time(tiny_model, tiny_head, device):
    """Batches of different lengths (padding masked) give each RNA its own probabilities, which
    are also those of the original's one-sequence path on the CPU."""
    records = [(f"s{i}", "GGAUCCUAGCAUGC"[: 5 + i]) for i in range(8)]
    reference = {name: direct_probabilities(tiny_model, tiny_head, sequence) for name, sequence in records}
    lm, head = tiny_model.to(device), tiny_head.to(device)
    batched = {p.id: p.probabilities for p in StructurePredictor(lm, head, max_pairs=10**6).predict(records)}
    single = {p.id: p.probabilities for p in StructurePredictor(lm, head, max_pairs=1).predict(records)}
    for key in single:
        np.testing.assert_allclose(batched[key], single[key], atol=2e-5)
        np.testing.assert_allclose(single[key], reference[key], atol=2e-5)


def test_head_must_fit_the_language_model(tiny_model):
    with pytest.raises(ValueError, match="64"):
        StructurePredictor(tiny_model, RotaFormer(RotaFormerConfig(input_dim=32, num_blocks=1)))


def test_every_record_comes_once_with_its_index_and_probabilities(tiny_model, tiny_head):
    results = list(StructurePredictor(tiny_model, tiny_head, max_pairs=200).predict(RECORDS, first_index=10))
    assert sorted(r.index for r in results) == list(range(10, 18))  # completion order, indexed
    for result in results:
        name, sequence = RECORDS[result.index - 10]
        assert (result.id, result.sequence) == (name, sequence)
        p = result.probabilities
        assert p.dtype == np.float32 and p.shape == (len(sequence),) * 2
        assert (p >= 0).all() and (p <= 1).all()
        np.testing.assert_allclose(p, p.T, atol=1e-6)


def test_skipped_records_leave_the_others_bit_identical(tiny_model, tiny_head):
    """A resumed job skips what it has; the rest must equal an uninterrupted run's bit for bit."""
    predictor = StructurePredictor(tiny_model, tiny_head, max_tokens=40, max_pairs=300)
    full = {r.index: r.probabilities for r in predictor.predict(RECORDS)}
    skip = {0, 3, 4, 7}
    resumed = {r.index: r.probabilities for r in predictor.predict(RECORDS, skip=skip)}
    assert set(resumed) == set(range(len(RECORDS))) - skip
    for index, probabilities in resumed.items():
        assert np.array_equal(probabilities, full[index]), index


def test_load_predictor_takes_saved_directories_and_keeps_the_budget(tiny_model, tiny_head, tmp_path):
    tiny_model.save_pretrained(tmp_path / "lm")
    tiny_head.save_pretrained(tmp_path / "head")
    predictor = load_predictor(tmp_path / "lm", tmp_path / "head", device="cpu", max_tokens=64)
    assert predictor.encoder.max_tokens == 64
    (result,) = predictor.predict([RECORDS[5]])
    np.testing.assert_allclose(result.probabilities, direct_probabilities(tiny_model, tiny_head, RECORDS[5][1]),
                               atol=1e-5)
