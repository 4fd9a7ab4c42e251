"""Pair lists of long RNAs: files, and decoding and confidence from them (protrna.sparse_pairs)."""

import zipfile

import numpy as np
import pytest

from protrna.confidence import expected_accuracy, pairing_probability
from protrna.sparse_pairs import SparsePairProbabilities
from protrna.structure import BasePairs, resolve_conflicts


def random_map(length, seed=0, sharp=6.0):
    """A symmetric map with a few strong cells among many weak ones, as a trained head gives."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(-sharp, 3.0, (length, length))
    matrix = (1 / (1 + np.exp(-(logits + logits.T) / 2))).astype(np.float32)
    np.fill_diagonal(matrix, 0.0)
    return matrix


def test_save_and_load_round_trip(tmp_path):
    sparse = SparsePairProbabilities.from_dense(random_map(60), floor=1e-3)
    sparse.max_span, sparse.complete_span = 40, 20
    path = sparse.save(tmp_path / "x.npz")
    assert not list(tmp_path.glob(".*")), "no scratch file left"
    loaded = SparsePairProbabilities.load(path)
    for name in ("i", "j", "p", "pairing"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(sparse, name))
        assert getattr(loaded, name).dtype == getattr(sparse, name).dtype
    assert (loaded.length, loaded.floor, loaded.max_span, loaded.complete_span, loaded.expected_pairs) == (
        60, 1e-3, 40, 20, sparse.expected_pairs)
    # Plain numpy reads it too.
    with np.load(path) as data:
        assert int(data["length"]) == 60 and (data["p"] > 1e-3).all()


def test_bad_files_are_one_clear_error_naming_the_file(tmp_path):
    (tmp_path / "text.npz").write_text("not a zip")
    np.save(tmp_path / "array.npy", np.zeros(3))
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    good = SparsePairProbabilities.from_dense(random_map(10)).save(tmp_path / "good.npz")
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(tmp_path / "cut.npz", "w") as target:
        for item in source.infolist():
            if item.filename != "pairing.npy":
                target.writestr(item, source.read(item))
    sparse = SparsePairProbabilities.from_dense(random_map(10))
    sparse.i[0], sparse.j[0] = 5, 2  # i > j
    sparse.save(tmp_path / "swapped.npz")
    for name, message in [("text.npz", "cannot read it as .npz"), ("array.npy", "single .npy array"),
                          ("other.npz", "not a protrna sparse pair file"), ("cut.npz", "missing pairing"),
                          ("swapped.npz", r"pair \(6, 3\) is not i < j")]:
        with pytest.raises(ValueError, match=message) as error:
            SparsePairProbabilities.load(tmp_path / name)
        assert str(tmp_path / name) in str(error.value)


@pytest.mark.parametrize("method", ["greedy", "matching"])
@pytest.mark.parametrize("options", [{}, {"min_hairpin": 3}, {"canonical_only": True}])
def test_decoding_the_list_gives_the_structure_of_the_dense_map(method, options):
    matrix = random_map(80, seed=2, sharp=3.0)
    sequence = "".join(np.random.default_rng(1).choice(list("ACGU"), 80))
    sparse = SparsePairProbabilities.from_dense(matrix, floor=0.1)
    dense_pairs = resolve_conflicts(matrix, 0.2, sequence=sequence, method=method, **options)
    assert len(dense_pairs.pairs) > 5
    assert resolve_conflicts(sparse, 0.2, sequence=sequence, method=method, **options) == dense_pairs
    assert resolve_conflicts(sparse, 0.1, sequence=sequence, method=method, **options) == resolve_conflicts(
        matrix, 0.1, sequence=sequence, method=method, **options)


def test_ties_break_as_in_the_dense_map():
    matrix = np.zeros((6, 6), dtype=np.float32)
    for i, j in [(0, 5), (0, 4), (1, 5), (1, 4)]:
        matrix[i, j] = matrix[j, i] = 0.5
    sparse = SparsePairProbabilities.from_dense(matrix)
    # Ties go to the pair first in (i, j) order: (0, 4), then (1, 5).
    assert resolve_conflicts(sparse, 0.25) == resolve_conflicts(matrix, 0.25) == BasePairs(6, [(0, 4), (1, 5)])


def test_a_threshold_below_the_floor_is_refused():
    sparse = SparsePairProbabilities.from_dense(random_map(20), floor=0.01)
    with pytest.raises(ValueError, match="above 0.01 only.*--pair-floor"):
        resolve_conflicts(sparse, 0.005)


def test_confidence_from_the_list_equals_the_dense_one():
    matrix = random_map(70, seed=5, sharp=3.0)
    pairs = resolve_conflicts(matrix, 0.3)
    dense = expected_accuracy(matrix, pairs)
    # The floor drops pairs from the list, not from the sums that recall and pairing need.
    for floor in (0.0, 0.05, 0.3):
        sparse = SparsePairProbabilities.from_dense(matrix, floor=floor)
        assert len(sparse) < 70 * 69 / 2 or floor == 0.0
        estimate = expected_accuracy(sparse, pairs)
        for name, value in dense.as_dict().items():
            assert getattr(estimate, name) == pytest.approx(value, rel=1e-9, abs=1e-12), name
        np.testing.assert_allclose(pairing_probability(sparse), pairing_probability(matrix), rtol=1e-9)
    with pytest.raises(ValueError, match="structure is for 5 nt"):
        expected_accuracy(sparse, BasePairs(5, []))


def test_above_and_to_dense():
    matrix = random_map(30, seed=7, sharp=2.0)
    sparse = SparsePairProbabilities.from_dense(matrix)
    np.testing.assert_array_equal(sparse.to_dense(), matrix)
    higher = sparse.above(0.4)
    np.testing.assert_array_equal(higher.to_dense(), np.where(matrix > 0.4, matrix, 0))
    assert higher.expected_pairs == sparse.expected_pairs
    with pytest.raises(ValueError, match="cannot lower the floor"):
        higher.above(0.1)
    np.testing.assert_array_equal(sparse.lookup(np.array([[3, 1], [1, 3], [0, 29]])),
                                  [matrix[1, 3], matrix[1, 3], matrix[0, 29]])
