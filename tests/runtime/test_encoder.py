"""plan_windows and WindowedEncoder against the model called directly, one sequence and one
window at a time (the original's path)."""

import numpy as np
import pytest
import torch

from protrna.runtime import WindowedEncoder, plan_windows
from tests.original import direct_representations


@pytest.mark.parametrize("window, overlap", [(510, 128), (8, 4), (8, 0), (5, 4)])
def test_windows_cover_every_nucleotide_with_the_overlap(window, overlap):
    for length in range(1, 3 * window + 2):
        spans = plan_windows(length, window, overlap)
        if length <= window:
            assert spans == [(0, length)]
            continue
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(end - start == window for start, end in spans)  # no short window
        covered = np.zeros(length, dtype=int)
        for start, end in spans:
            covered[start:end] += 1
        assert covered.min() >= 1
        starts = [start for start, _ in spans]
        assert starts == sorted(set(starts))  # windows move forward
        for (_, previous_end), (start, _) in zip(spans, spans[1:]):
            assert previous_end - start >= overlap  # neighbours share at least the overlap


@pytest.mark.parametrize("overlap", [-1, 8, 9])
def test_an_overlap_outside_the_window_is_refused(overlap, tiny_model):
    with pytest.raises(ValueError, match="overlap must be in"):
        plan_windows(20, 8, overlap)
    with pytest.raises(ValueError, match="overlap must be in"):
        WindowedEncoder(tiny_model, [2], window=8, overlap=overlap)


def test_a_short_rna_equals_the_model_called_alone(tiny_model):
    sequence = "GGAUCCUAGCAUGC"
    (encoded,) = WindowedEncoder(tiny_model, [1, 2]).encode([("a", sequence)])
    direct = direct_representations(tiny_model, sequence, [1, 2])
    assert (encoded.id, encoded.length) == ("a", len(sequence))
    for layer in (1, 2):
        torch.testing.assert_close(encoded.per_token[layer], direct[layer][1:-1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(encoded.bos[layer], direct[layer][0], atol=1e-5, rtol=1e-5)


def test_a_long_rna_is_the_average_of_its_windows(tiny_model):
    rng = np.random.default_rng(3)
    sequence = "".join(rng.choice(list("ACGU"), 23))
    window, overlap = 8, 3
    (encoded,) = WindowedEncoder(tiny_model, [2], window=window, overlap=overlap).encode([("long", sequence)])
    total, counts, bos = torch.zeros(23, tiny_model.embed_dim), torch.zeros(23, 1), []
    for start, end in plan_windows(23, window, overlap):
        direct = direct_representations(tiny_model, sequence[start:end], [2])[2]
        total[start:end] += direct[1:-1]
        counts[start:end] += 1
        bos.append(direct[0])
    torch.testing.assert_close(encoded.per_token[2], total / counts, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(encoded.bos[2], torch.stack(bos).mean(0), atol=1e-5, rtol=1e-5)


def test_batches_and_skips_do_not_change_a_records_numbers(tiny_model):
    rng = np.random.default_rng(4)
    records = [(f"r{i}", "".join(rng.choice(list("ACGU"), n))) for i, n in enumerate([3, 30, 9, 17, 12, 25, 5])]

    def run(max_tokens, skip=()):
        encoder = WindowedEncoder(tiny_model, [2], max_tokens=max_tokens, window=16, overlap=6)
        return {e.index: e.per_token[2] for e in encoder.encode(records, first_index=100, skip=skip)}

    one_by_one, batched = run(1), run(10_000)
    assert sorted(batched) == list(range(100, 107))
    for index in batched:  # padding is masked: batching changes rounding at most
        torch.testing.assert_close(batched[index], one_by_one[index], atol=1e-5, rtol=1e-5)
    # A resumed job's skips: the others are those of the full run, bit for bit.
    full, resumed = run(60), run(60, skip={1, 4})
    assert sorted(resumed) == [100, 102, 103, 105, 106]
    assert all(torch.equal(resumed[index], full[index]) for index in resumed)
