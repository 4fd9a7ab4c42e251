import matplotlib.image
import numpy as np
import pytest

from protrna.plot import plot_structure
from protrna.structure import BasePairs, read_dbn, sigmoid


@pytest.fixture(scope="module")
def record(data_dir):
    return next(r for r in read_dbn(data_dir / "bprna" / "TS0.dbn") if "[" in r.dot_bracket and len(r) < 120)


def _image(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path)


def test_probability_map_with_prediction_and_reference(record, tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.normal(-4, 1, (len(record), len(record))) + 6 * record.pairs.to_matrix()
    probabilities = sigmoid((logits + logits.T) / 2)
    path = plot_structure(tmp_path / "map.png", probabilities=probabilities, reference=record.pairs,
                          sequence=record.sequence, title=record.id)
    image = _image(path)
    assert image.shape[0] > 400 and image.shape[1] > 2 * image.shape[0] - 200  # two panels side by side
    assert image[..., :3].std() > 0.05  # something was drawn


def test_arcs_only_and_several_partners(tmp_path):
    pred = BasePairs(30, [(0, 29), (0, 28), (1, 27), (5, 12)])  # base 1 has two partners: still drawable
    _image(plot_structure(tmp_path / "arcs.png", pred=pred))
    _image(plot_structure(tmp_path / "empty.png", pred=BasePairs(30), reference=BasePairs(30)))


def test_inputs_are_checked(tmp_path):
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_structure(tmp_path / "x.png")
    with pytest.raises(ValueError, match="lengths disagree"):
        plot_structure(tmp_path / "x.png", pred=BasePairs(10), sequence="ACGU")


def test_arcs_run_between_one_based_positions():
    from protrna.plot import _arcs

    (arc,) = _arcs([(0, 4)], above=True)  # bases 1 and 5, as a bpseq file numbers them
    assert arc[0] == pytest.approx([1, 0]) and arc[-1] == pytest.approx([5, 0], abs=1e-9)
    assert arc[:, 1].max() == pytest.approx(2, abs=0.01)  # height: half the span


def test_pairing_probability_track(record, tmp_path):
    pytest.importorskip("RNA", reason="ViennaRNA is not installed: pip install 'protrna[rnafold]'")
    from protrna.baselines import rnafold_probabilities

    pairs, probabilities = rnafold_probabilities(record.sequence)
    with_track = _image(plot_structure(tmp_path / "track.png", probabilities=probabilities, pred=pairs,
                                       reference=record.pairs))
    without = _image(plot_structure(tmp_path / "plain.png", pred=pairs, reference=record.pairs))
    assert with_track.shape[0] > without.shape[0]  # the track adds a row under the arcs
    # Bars are drawn dark for bases paired in the prediction: the track's region holds such pixels.
    bottom_right = with_track[int(with_track.shape[0] * 0.78):, with_track.shape[1] // 2:, :3]
    assert (bottom_right.mean(axis=2) < 0.25).mean() > 0.05
    with pytest.raises(ValueError, match="lengths disagree"):
        plot_structure(tmp_path / "x.png", pred=pairs, pairing=np.ones(len(record) + 1))
    # The head's independent sigmoids can sum past 1 per base: the axis grows instead of clipping.
    _image(plot_structure(tmp_path / "over.png", pred=pairs, pairing=np.full(len(record), 1.7)))
