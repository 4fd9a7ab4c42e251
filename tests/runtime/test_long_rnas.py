"""Long RNAs through the head in local windows (protrna.runtime.long_rnas, StructurePredictor).

What is equal and what is not, as tested here:

* an RNA of at most ``max_span`` nt gets exactly (bit for bit) the probabilities it gets without
  a ``max_span`` (to float noise when longer RNAs share its input: batches differ then);
* a pair of a long RNA that lies in exactly one head window gets, bit for bit, the probability of
  the head run on that window's slice of the whole-RNA representations; a pair in several
  windows gets the float32 mean of those runs;
* the whole-length head does *not* give the windowed probabilities (its receptive field is the
  whole RNA), so that is checked to differ;
* no pair ``max_span`` or more apart is listed, and every pair in some window is.
"""

import numpy as np
import pytest
import torch

from protrna.heads.ss import RotaFormer, RotaFormerConfig
from protrna.runtime import StructurePredictor, plan_span_windows
from protrna.runtime.long_rnas import WindowMeans, check_max_span, complete_span, window_stride
from protrna.structure import sigmoid


@pytest.fixture
def tiny_head():
    torch.manual_seed(1)
    return RotaFormer(RotaFormerConfig(input_dim=64, num_blocks=1)).eval()


def random_rna(length, seed=0):
    return "".join(np.random.default_rng(seed).choice(list("ACGU"), length))


def coverage(length, windows):
    """(L, L) int: how many windows hold both bases of each cell."""
    counts = np.zeros((length, length), dtype=int)
    for start, end in windows:
        counts[start:end, start:end] += 1
    return counts


@pytest.mark.parametrize("length, span", [(1200, 500), (1001, 500), (130, 40), (131, 41), (77, 2), (60, 59)])
def test_windows_cover_every_pair_up_to_the_complete_span_and_none_from_max_span(length, span):
    windows = plan_span_windows(length, span)
    assert windows[0][0] == 0 and windows[-1][1] == length, "5' and 3' ends covered"
    assert all(end - start == span for start, end in windows), "every window is a full head run"
    starts = [start for start, _ in windows]
    assert all(b - a == window_stride(span) for a, b in zip(starts[:-2], starts[1:-1]))
    assert 0 < starts[-1] - starts[-2] <= window_stride(span), "the last window is moved back, not added"
    counts = coverage(length, windows)
    i, j = np.triu_indices(length, k=1)
    spans, covered = j - i, counts[i, j] > 0
    assert covered[spans <= complete_span(span)].all()
    assert not covered[spans >= span].any()


def test_max_span_checks():
    assert check_max_span(None) == 0 and check_max_span(0) == 0 and check_max_span(2) == 2
    for bad in (-1, 1, 2.5):
        with pytest.raises(ValueError, match="--max-span"):
            check_max_span(bad)


def test_window_means_are_the_mean_over_the_windows_holding_each_pair():
    """Arbitrary window maps, fed in plan order, against sums and counts over the whole matrix."""
    length, span = 23, 8
    windows = plan_span_windows(length, span)
    rng = np.random.default_rng(3)
    maps = []
    for start, end in windows:
        block = rng.random((end - start, end - start)).astype(np.float32)
        maps.append((block + block.T) / 2)
    sums, counts = np.zeros((length, length)), coverage(length, windows)
    for (start, end), block in zip(windows, maps):
        sums[start:end, start:end] += block.astype(np.float64)
    means = WindowMeans(length, windows, floor=0.3)
    for block in maps:
        means.add(block)
    result = means.result(max_span=span).check()
    i, j = np.triu_indices(length, k=1)
    inside = counts[i, j] > 0
    expected = (sums[i, j][inside] / counts[i, j][inside]).astype(np.float32)
    listed = expected > 0.3
    np.testing.assert_array_equal(result.pairs(), np.stack([i[inside][listed], j[inside][listed]], axis=1))
    np.testing.assert_array_equal(result.p, expected[listed])
    # The totals count every predicted pair, listed or not.
    dense = np.zeros((length, length))
    dense[i[inside], j[inside]] = expected
    assert result.expected_pairs == pytest.approx(dense.sum(), rel=1e-12)
    np.testing.assert_allclose(result.pairing, dense.sum(axis=0) + dense.sum(axis=1), rtol=1e-12)
    assert result.max_span == span and result.complete_span == complete_span(span)
    with pytest.raises(ValueError, match=r"needs \(8, 8\)"):
        WindowMeans(length, windows, 0.0).add(np.zeros((5, 5), np.float32))


def test_an_rna_up_to_max_span_is_folded_exactly_as_without_it(tiny_model, tiny_head):
    short = [(f"s{k}", random_rna(n, k)) for k, n in enumerate((40, 12, 39, 25))]  # 40 = max_span: whole
    without = {p.id: p.probabilities for p in StructurePredictor(tiny_model, tiny_head).predict(short)}
    with_span = {p.id: p for p in StructurePredictor(tiny_model, tiny_head, max_span=40).predict(short)}
    for name, probabilities in without.items():
        assert not with_span[name].sparse
        np.testing.assert_array_equal(with_span[name].probabilities, probabilities)
    # With a long RNA in the input, batches change (the language model's are planned over the whole
    # input, with or without max_span; the head's leave the long RNA out): the same to float noise.
    mixed = short[:2] + [("long", random_rna(130, 9))] + short[2:]
    results = {p.id: p for p in StructurePredictor(tiny_model, tiny_head, max_span=40).predict(mixed)}
    assert results["long"].sparse and results["long"].probabilities.length == 130
    for name, probabilities in without.items():
        assert not results[name].sparse
        np.testing.assert_allclose(results[name].probabilities, probabilities, atol=1e-5)


@pytest.mark.parametrize("length, span", [(130, 40), (600, 100)])  # 600: the LM runs in windows too
def test_long_rna_windows_equal_the_head_on_each_window_alone(tiny_model, tiny_head, length, span):
    sequence = random_rna(length, length)
    predictor = StructurePredictor(tiny_model, tiny_head, max_span=span)
    (result,) = predictor.predict([("long", sequence)], pair_floor=0.0)
    pairs = result.probabilities.check()
    windows = plan_span_windows(length, span)
    assert predictor.windows(length) == windows and len(windows) > 2

    # Reference: the head alone on each window's slice of the whole-RNA representations.
    (encoded,) = predictor.encoder.encode([("long", sequence)])
    representations = encoded.per_token[tiny_model.num_layers]
    reference = np.zeros((length, length))
    with torch.inference_mode():
        for start, end in windows:
            logits = tiny_head.pair_logits(representations[start:end][None], None)[0].numpy()
            reference[start:end, start:end] += sigmoid(logits).astype(np.float32)
    counts = coverage(length, windows)
    i, j = np.triu_indices(length, k=1)
    inside = counts[i, j] > 0
    # floor 0: every predicted pair is listed, and nothing else.
    np.testing.assert_array_equal(pairs.pairs(), np.stack([i[inside], j[inside]], axis=1))
    once = counts[pairs.i, pairs.j] == 1
    assert once.sum() > 100 and (~once).sum() > 100
    np.testing.assert_array_equal(pairs.p[once], reference[pairs.i, pairs.j][once].astype(np.float32))
    mean = (reference[pairs.i, pairs.j] / counts[pairs.i, pairs.j]).astype(np.float32)
    np.testing.assert_array_equal(pairs.p[~once], mean[~once])
    assert (pairs.j - pairs.i).max() == span - 1

    if length <= 200:  # the whole-length head at 600 nt takes a minute here
        # Not equal: the whole-length head sees every base at once.
        (whole,) = StructurePredictor(tiny_model, tiny_head).predict([("long", sequence)])
        assert np.abs(whole.probabilities[pairs.i, pairs.j] - pairs.p).max() > 1e-3


def test_the_floor_shortens_the_list_not_the_totals(tiny_model, tiny_head):
    sequence = random_rna(130, 4)
    predictor = StructurePredictor(tiny_model, tiny_head, max_span=40)
    (everything,) = predictor.predict([sequence], pair_floor=0.0)
    (floored,) = predictor.predict([sequence], pair_floor=0.5)
    full, kept = everything.probabilities, floored.probabilities
    above = full.p > 0.5
    assert 0 < len(kept) == above.sum() < len(full)
    np.testing.assert_array_equal(kept.pairs(), full.pairs()[above])
    np.testing.assert_array_equal(kept.p, full.p[above])
    np.testing.assert_array_equal(kept.pairing, full.pairing)
    assert kept.expected_pairs == full.expected_pairs and kept.floor == 0.5
    with pytest.raises(ValueError, match="--pair-floor"):
        list(predictor.predict([sequence], pair_floor=1.0))


def test_windows_share_head_calls_within_the_pair_budget(tiny_model, tiny_head):
    """Batched windows (as on a GPU budget) give the one-at-a-time numbers to float noise."""
    sequence = random_rna(200, 5)
    (one,) = StructurePredictor(tiny_model, tiny_head, max_span=40).predict([sequence], pair_floor=0.0)
    (many,) = StructurePredictor(tiny_model, tiny_head, max_span=40, max_pairs=4 * 40**2).predict(
        [sequence], pair_floor=0.0)
    np.testing.assert_array_equal(one.probabilities.pairs(), many.probabilities.pairs())
    np.testing.assert_allclose(one.probabilities.p, many.probabilities.p, atol=2e-6)


def test_skipped_long_rnas_are_neither_embedded_nor_folded(tiny_model, tiny_head):
    records = [("a", random_rna(90, 1)), ("b", random_rna(20, 2)), ("c", random_rna(100, 3))]
    predictor = StructurePredictor(tiny_model, tiny_head, max_span=40)
    full = {p.id: p for p in predictor.predict(records, pair_floor=0.0)}
    resumed = {p.id: p for p in predictor.predict(records, skip=[0], pair_floor=0.0)}
    assert sorted(resumed) == ["b", "c"]
    np.testing.assert_array_equal(resumed["c"].probabilities.p, full["c"].probabilities.p)
    np.testing.assert_array_equal(resumed["b"].probabilities, full["b"].probabilities)
