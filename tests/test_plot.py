import matplotlib.image
import numpy as np
import pytest

from protrna.plot import draw_structure, plot_structure
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


# ---- what is drawn, read back from the figure ----------------------------------------------------


def _axes(figure, label):
    (axes,) = [a for a in figure.axes if a.get_label() == label]
    return axes


def _arc_segments(figure):
    """Every arc polyline of the arc diagram, above and below the axis."""
    return [segment for collection in _axes(figure, "arc diagram").collections
            for segment in collection.get_segments()]


def test_the_arc_diagram_draws_one_arc_per_pair_at_its_ends():
    pred = BasePairs(40, [(0, 39), (0, 38), (2, 30), (10, 14)])
    reference = BasePairs(40, [(0, 39), (3, 29), (20, 25)])
    segments = _arc_segments(draw_structure(pred=pred, reference=reference))
    above = sorted((round(s[0, 0]), round(s[-1, 0])) for s in segments if s[:, 1].max() > 0)
    below = sorted((round(s[0, 0]), round(s[-1, 0])) for s in segments if s[:, 1].min() < 0)
    assert above == [(1, 39), (1, 40), (3, 31), (11, 15)]  # predicted, 1-based ends
    assert below == [(1, 40), (4, 30), (21, 26)]  # reference
    for segment in segments:  # each as high as half its span
        span = segment[-1, 0] - segment[0, 0]
        assert np.abs(segment[:, 1]).max() == pytest.approx(span / 2, rel=0.01)
    assert _arc_segments(draw_structure(pred=BasePairs(40))) == []


def test_the_arc_height_scale_is_the_rnas_length_not_its_longest_pair():
    short_arc = draw_structure(pred=BasePairs(100, [(50, 52)]))
    long_arc = draw_structure(pred=BasePairs(100, [(0, 99)]))
    top = _axes(short_arc, "arc diagram").get_ylim()[1]
    assert top == _axes(long_arc, "arc diagram").get_ylim()[1]  # one scale for one length
    (segment,) = _arc_segments(short_arc)
    assert segment[:, 1].max() / top < 0.03  # a pair two bases apart stays low
    (segment,) = _arc_segments(long_arc)
    assert 0.9 < segment[:, 1].max() / top <= 1  # the longest possible pair just fits
    # Twice the length, twice the height: arcs of one span look alike in RNAs of one length.
    assert _axes(draw_structure(pred=BasePairs(200, [(0, 2)])), "arc diagram").get_ylim()[1] == pytest.approx(
        top * 199 / 99)


def test_the_probability_map_shows_the_pairs_where_they_are():
    length, pairs = 24, [(1, 22), (2, 21), (3, 20), (8, 15)]
    probabilities = np.full((length, length), 0.01)
    for i, j in pairs:
        probabilities[i, j] = probabilities[j, i] = 0.97
    figure = draw_structure(probabilities=probabilities)
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].astype(float) / 255
    map_ax = _axes(figure, "pair map")

    def grey(i, j):  # the lower triangle: the heat map alone (markers go above the diagonal)
        x, y = map_ax.transData.transform((i + 1, j + 1))
        return pixels[pixels.shape[0] - int(round(y)), int(round(x))].mean()

    assert all(grey(i, j) < 0.2 for i, j in pairs)  # dark where the pairs are
    assert all(grey(i, j) > 0.9 for i, j in [(1, 10), (5, 12), (0, 23), (8, 20)])  # light elsewhere
    (image,) = map_ax.get_images()
    np.testing.assert_array_equal(image.get_array(), probabilities)
    box = map_ax.get_window_extent()
    region = pixels[pixels.shape[0] - int(box.y1): pixels.shape[0] - int(box.y0), int(box.x0): int(box.x1)]
    assert region.std() > 0.1  # not blank
    assert len(_arc_segments(figure)) == len(pairs)  # pred defaults to probabilities > threshold
