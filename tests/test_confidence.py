import math
import sys

import numpy as np
import pytest

from protrna.confidence import (
    CONFIDENCE_COLUMNS,
    ConfidenceTable,
    Reliability,
    check_probabilities,
    correlation,
    expected_accuracy,
    pairing_probability,
    read_confidence_table,
)
from protrna.structure import BasePairs, read_dbn


@pytest.fixture(scope="module")
def ts0_records(data_dir):
    """Five short real TS0 records (with their reference pairs)."""
    short = (r for r in read_dbn(data_dir / "bprna" / "TS0.dbn") if len(r) <= 90)
    return [r for _, r in zip(range(5), short)]


def _by_loops(P, predicted):
    """The module doc's formulas, written out cell by cell."""
    L = len(P)
    tp = 0.0
    for i, j in predicted:
        tp += P[i][j]
    expected_pairs = 0.0
    for i in range(L):
        for j in range(i + 1, L):
            expected_pairs += P[i][j]
    precision = tp / len(predicted) if predicted else 0.0
    recall = tp / expected_pairs if expected_pairs else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    pairing = [sum(P[i][j] for j in range(L) if j != i) for i in range(L)]
    return precision, recall, f1, sum(pairing) / L


def test_expected_accuracy_of_a_hand_made_matrix_matches_the_formulas(ts0_records):
    pytest.importorskip("RNA", reason="ViennaRNA is not installed: pip install 'protrna[rnafold]'")
    from protrna.baselines import rnafold

    for record in ts0_records:
        L = len(record)
        P = np.zeros((L, L))
        for k, (i, j) in enumerate(record.pairs):  # known values: 0.9, 0.6, 0.3, 0.9, ... on the reference pairs
            P[i, j] = P[j, i] = (0.9, 0.6, 0.3)[k % 3]
        P[0, L - 1] = P[L - 1, 0] = max(P[0, L - 1], 0.05)
        predicted = rnafold(record.sequence)  # a real prediction, partly right
        estimate = expected_accuracy(P, predicted)
        precision, recall, f1, mean_pairing = _by_loops(P.tolist(), predicted.to_list())
        assert estimate.predicted_pairs == len(predicted.to_list())
        assert estimate.expected_precision == pytest.approx(precision, abs=1e-12)
        assert estimate.expected_recall == pytest.approx(recall, abs=1e-12)
        assert estimate.expected_f1 == pytest.approx(f1, abs=1e-12)
        assert estimate.mean_pairing_probability == pytest.approx(mean_pairing, abs=1e-12)
        # Predicting the reference itself: expected precision is the mean of the values put there.
        exact = expected_accuracy(P, record.pairs)
        values = [P[i, j] for i, j in record.pairs]
        assert exact.expected_precision == pytest.approx(sum(values) / len(values))


def test_a_thresholded_matrix_counts_as_its_pairs():
    P = np.full((5, 5), 0.1)
    np.fill_diagonal(P, 0.0)
    P[0, 4] = P[4, 0] = P[0, 3] = P[3, 0] = 0.7  # base 1 with two partners, as the raw map allows
    estimate = expected_accuracy(P, P > 0.5)
    assert estimate.predicted_pairs == 2 and estimate.expected_precision == pytest.approx(0.7)
    assert estimate.expected_recall == pytest.approx(1.4 / (1.4 + 8 * 0.1))
    empty = expected_accuracy(np.zeros((5, 5)), BasePairs(5))
    assert (empty.expected_precision, empty.expected_recall, empty.expected_f1) == (0.0, 0.0, 0.0)


def test_bad_matrices_are_named():
    with pytest.raises(ValueError, match=r"rec: pair probabilities are not symmetric: \(1, 2\)"):
        check_probabilities(np.array([[0, 0.5], [0.2, 0]]), "rec")
    with pytest.raises(ValueError, match=r"\(2, 1\) is 1\.5, not in \[0, 1\]"):
        check_probabilities(np.array([[0, 0.2], [1.5, 0]]))
    with pytest.raises(ValueError, match="square"):
        pairing_probability(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="structure is for 4 nt, probabilities for 3 nt"):
        expected_accuracy(np.zeros((3, 3)), BasePairs(4))


def test_rnafold_pair_probabilities_are_a_distribution_per_base(ts0_records):
    pytest.importorskip("RNA", reason="ViennaRNA is not installed: pip install 'protrna[rnafold]'")
    import RNA

    from protrna.baselines import rnafold, rnafold_probabilities

    for record in ts0_records:
        pairs, P = rnafold_probabilities(record.sequence)
        assert pairs == rnafold(record.sequence)  # the MFE structure of RNA.fold, same model
        assert P.shape == (len(record), len(record)) and np.array_equal(P, P.T)
        assert np.all(np.diagonal(P) == 0) and P.min() >= 0
        rows = pairing_probability(P)
        assert rows.max() <= 1 + 1e-5  # each base pairs with at most one partner at a time
        assert np.allclose(rows, P.sum(axis=1))
        # The ensemble also gives the probability of staying unpaired: 1 - row sum. Check it
        # against ViennaRNA's own constrained partition functions for one base.
        sequence = record.sequence.upper()
        compound = RNA.fold_compound(sequence)
        _, mfe = compound.mfe()
        compound.exp_params_rescale(mfe)
        _, ensemble = compound.pf()
        k = int(np.argmax(rows))
        constrained = RNA.fold_compound(sequence)
        constrained.exp_params_rescale(mfe)
        constrained.hc_add_up(k + 1)
        _, unpaired = constrained.pf()
        kT = RNA.exp_param().kT / 1000.0
        assert 1 - rows[k] == pytest.approx(math.exp((ensemble - unpaired) / kT), abs=1e-3)


def test_rnafold_probabilities_agree_with_linearpartition(ts0_records):
    """Two implementations of the same ViennaRNA model: LinearPartition-V with a wide beam."""
    pytest.importorskip("RNA", reason="ViennaRNA is not installed")
    pylinearfold = pytest.importorskip("pylinearfold", reason="pylinearfold is not installed")
    from protrna.baselines import _from_triples, rnafold_probabilities

    for record in ts0_records[:3]:
        _, P = rnafold_probabilities(record.sequence)
        sequence = record.sequence.upper().replace("T", "U")
        if set(sequence) - set("ACGU"):
            continue
        other = _from_triples(len(sequence), pylinearfold.partition(sequence)["probabilities"])
        assert np.abs(P - other).max() < 0.02


def test_correlation_matches_its_definitions(monkeypatch):
    x = [0.1, 0.4, 0.35, 0.8, 0.55, 0.2]
    y = [0.0, 0.5, 0.3, 0.9, 0.4, 0.35]
    n = len(x)
    rank_x, rank_y = [1, 4, 3, 6, 5, 2], [1, 5, 2, 6, 4, 3]
    spearman = 1 - 6 * sum((a - b) ** 2 for a, b in zip(rank_x, rank_y)) / (n * (n * n - 1))
    for scipy_available in (True, False):
        if not scipy_available:
            monkeypatch.setitem(sys.modules, "scipy", None)  # the numpy path
        result = correlation(x, y)
        assert result["n"] == 6
        assert result["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
        assert result["spearman"] == pytest.approx(spearman, abs=1e-12)
    # Ties take their mean rank: x ranks 1, 2.5, 2.5, 4.
    tied = correlation([1, 2, 2, 3], [1, 2, 3, 4])
    assert tied["spearman"] == pytest.approx(np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1])
    assert math.isnan(correlation([0.5, 0.5, 0.5], [0.1, 0.2, 0.3])["pearson"])
    assert math.isnan(correlation([0.5], [0.1])["spearman"])
    with pytest.raises(ValueError, match="equally long"):
        correlation([1, 2], [1, 2, 3])


def test_reliability_bins_count_cells_and_reference_pairs():
    P = np.zeros((5, 5))
    for (i, j), p in {(0, 4): 0.95, (1, 3): 0.55, (0, 2): 0.15, (2, 4): 0.05}.items():
        P[i, j] = P[j, i] = p
    bins = Reliability(bins=2)
    bins.add(P, BasePairs(5, [(0, 4), (0, 2)]))
    low, high = bins.table()
    assert (low["cells"], low["true_pairs"], high["cells"], high["true_pairs"]) == (8, 1, 2, 1)
    assert low["mean_probability"] == pytest.approx(0.2 / 8) and high["mean_probability"] == pytest.approx(0.75)
    gap = 8 * abs(1 / 8 - 0.2 / 8) + 2 * abs(1 / 2 - 0.75)
    assert bins.expected_calibration_error() == pytest.approx(gap / 10)
    assert bins.expected_calibration_error(0.5) == pytest.approx(abs(1 / 2 - 0.75))
    assert math.isnan(Reliability().expected_calibration_error())


def test_confidence_table_survives_a_torn_line_and_keeps_input_order(tmp_path):
    P = np.zeros((6, 6))
    P[0, 5] = P[5, 0] = 0.8
    table = ConfidenceTable(tmp_path)
    table.add("b", P, BasePairs(6, [(0, 5)]))
    table.add("a", P, BasePairs(6))
    table.close()
    with open(tmp_path / "confidence.tsv.partial", "a") as handle:
        handle.write("c\t6\t1\t0.5")  # a kill mid-line
    table = ConfidenceTable(tmp_path)  # a rerun: the torn row is gone, the two complete ones stay
    assert set(table.rows) == {"a", "b"}
    table.add("c", P, BasePairs(6, [(0, 5)]))
    path = table.finish(["a", "b", "c", "d"])  # "d" has no row: left out with a warning
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == ["id", "length", *CONFIDENCE_COLUMNS]
    assert [line.split("\t")[0] for line in lines[1:]] == ["a", "b", "c"]
    rows = read_confidence_table(path)
    assert rows["b"]["expected_precision"] == pytest.approx(0.8) and rows["a"]["predicted_pairs"] == 0
    assert not (tmp_path / "confidence.tsv.partial").exists()


def test_fold_writes_the_confidence_of_what_it_predicted(tiny_model, tmp_path):
    import torch

    from protrna.fold import fold_fasta, StructurePredictor
    from protrna.heads.ss import RotaFormer, RotaFormerConfig
    from protrna.structure import read_dbn as read

    torch.manual_seed(1)
    head = RotaFormer(RotaFormerConfig(input_dim=tiny_model.embed_dim, num_blocks=1, threshold=0.5)).eval()
    fasta = tmp_path / "in.fa"
    fasta.write_text(">x\nGGGGAAACCCCAUG\n>y\nACGUACGUAGGCUA\n")
    out = fold_fasta(fasta, tmp_path / "out", predictor=StructurePredictor(tiny_model, head), probabilities=True,
                     progress=False)
    rows = read_confidence_table(out.parent / "confidence.tsv")
    assert list(rows) == ["x", "y"]
    for record in read(out):
        P = np.load(out.parent / f"{record.id}.npy")
        expected = expected_accuracy(P, record.pairs)
        row = rows[record.id]
        assert row["predicted_pairs"] == len(record.pairs.to_list())
        for name in CONFIDENCE_COLUMNS[1:]:
            assert row[name] == pytest.approx(getattr(expected, name), abs=1e-6)
