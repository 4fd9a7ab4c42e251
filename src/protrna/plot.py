"""Pictures of one RNA's predicted structure: pair-probability map, arc diagram and per-base
pairing probability, as PNG.

Drawn on a bare :class:`matplotlib.figure.Figure` with the Agg renderer, so no display, no
pyplot state and no backend setting is involved; safe in scripts, servers and tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .structure import DEFAULT_THRESHOLD, BasePairs, decode_matrix

# Colours (colour-blind safe, Okabe-Ito): pairs in both, only predicted, only in the reference.
_BOTH, _PRED_ONLY, _REF_ONLY, _PRED = "#009E73", "#D55E00", "#0072B2", "#000000"


def _as_pairs(structure: BasePairs | np.ndarray | None, length: int, name: str) -> BasePairs | None:
    if structure is None or isinstance(structure, BasePairs):
        pairs = structure
    else:
        pairs = BasePairs.from_matrix(np.asarray(structure))
    if pairs is not None and pairs.length != length:
        raise ValueError(f"{name} is for {pairs.length} nt, the plot for {length} nt")
    return pairs


def _arcs(pairs: list[tuple[int, int]], above: bool, points: int = 40) -> list[np.ndarray]:
    """Half-ellipse polylines from i to j, height half the span, above or below the axis."""
    angle = np.linspace(0, np.pi, points)
    sign = 1 if above else -1
    arcs = []
    for i, j in pairs:
        radius = (j - i) / 2
        x = i + 1 + radius * (1 - np.cos(angle))  # positions drawn 1-based, as in bpseq and ct
        arcs.append(np.column_stack([x, sign * radius * np.sin(angle)]))
    return arcs


def _length(value: BasePairs | np.ndarray | str) -> int:
    if isinstance(value, str):
        return len(value)
    return value.length if isinstance(value, BasePairs) else np.shape(value)[0]


def plot_structure(path: str | Path, *, dpi: int = 110, **drawing) -> Path:
    """Write :func:`draw_structure`'s figure of one RNA as a PNG (keywords as there).

    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "hairpin.png")
    >>> hairpin = BasePairs(9, [(0, 8), (1, 7)])
    >>> plot_structure(out, pred=hairpin, sequence="GGAAAAACC").stat().st_size > 0
    True
    """
    path = Path(path)
    draw_structure(**drawing).savefig(path, dpi=dpi)
    return path


def draw_structure(
    *,
    probabilities: np.ndarray | None = None,
    pred: BasePairs | np.ndarray | None = None,
    reference: BasePairs | np.ndarray | None = None,
    sequence: str | None = None,
    title: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    pairing: np.ndarray | None = None,
) -> Figure:
    """The figure of one RNA: the pair map (left) and the arc diagram (right).

    Left: ``probabilities`` as a heat map (if given), predicted pairs marked in the upper
    triangle (x = j, y = i) and reference pairs in the lower one. Right: predicted arcs above
    the axis, reference arcs below. With a reference, pairs in both are green, pairs only
    predicted orange, reference pairs missed blue. ``pred`` defaults to
    ``probabilities > threshold`` (several partners per base allowed, as scored). Under the arcs,
    a track of each base's pairing probability (``pairing``; by default the sum of its row of
    ``probabilities``, :func:`protrna.confidence.pairing_probability`), dark where the base is
    paired in ``pred``.

    The arcs' height scale is the RNA's length, not its longest pair: an arc is as high as half
    its span, and the axis as high as half the RNA, so a 3-nt hairpin stays low in every plot
    and two plots of one RNA compare at a glance. The axes are labelled ``pair map``, ``arc
    diagram`` and ``pairing`` (``Axes.get_label()``).

    >>> figure = draw_structure(pred=BasePairs(9, [(0, 8), (1, 7)]))
    >>> arcs = figure.axes[1].collections[0]
    >>> len(arcs.get_segments()), figure.axes[1].get_label()
    (2, 'arc diagram')
    """
    if pairing is None and probabilities is not None:
        from .confidence import pairing_probability

        pairing = pairing_probability(probabilities)
    given = {
        "probabilities": probabilities, "pred": pred, "reference": reference, "sequence": sequence,
        "pairing": pairing,
    }
    sizes = {name: _length(value) for name, value in given.items() if value is not None}
    if not sizes:
        raise ValueError("nothing to plot: give probabilities, pred or reference")
    length = next(iter(sizes.values()))
    if any(size != length for size in sizes.values()):
        raise ValueError(f"lengths disagree: {sizes}")
    if pred is None and probabilities is not None:
        pred = decode_matrix(probabilities, threshold)
    pred_pairs = _as_pairs(pred, length, "pred")
    ref_pairs = _as_pairs(reference, length, "reference")
    predicted = set(pred_pairs.to_list()) if pred_pairs is not None else set()
    known = set(ref_pairs.to_list()) if ref_pairs is not None else set()

    figure = Figure(figsize=(13, 5.6 if pairing is None else 6.3), layout="constrained")
    FigureCanvasAgg(figure)
    if pairing is None:
        map_ax, arc_ax = figure.subplots(1, 2, width_ratios=[1, 1.45])
        track_ax = None
    else:
        axes = figure.subplot_mosaic([["map", "arc"], ["map", "track"]], width_ratios=[1, 1.45],
                                     height_ratios=[3, 1])
        map_ax, arc_ax, track_ax = axes["map"], axes["arc"], axes["track"]
        track_ax.set_label("pairing")
    map_ax.set_label("pair map")
    arc_ax.set_label("arc diagram")

    # Pair map.
    if probabilities is not None:
        # Cell (i, j) centred on (j + 1, i + 1): positions 1-based, as in bpseq and ct files.
        image = map_ax.imshow(np.asarray(probabilities, dtype=float), cmap="Greys", vmin=0, vmax=1,
                              origin="upper", interpolation="nearest",
                              extent=(0.5, length + 0.5, length + 0.5, 0.5))
        figure.colorbar(image, ax=map_ax, shrink=0.8, label="pair probability")
    else:
        map_ax.set_xlim(0.5, length + 0.5)
        map_ax.set_ylim(length + 0.5, 0.5)
        map_ax.set_aspect("equal")
    marker = max(1.0, min(25.0, 4000 / max(length, 1) ** 1.3))

    def mark(pairs, lower: bool, colour: str, label: str, symbol: str):
        if pairs:
            i, j = np.array(sorted(pairs)).T + 1
            x, y = (i, j) if lower else (j, i)
            map_ax.scatter(x, y, s=marker, c=colour, marker=symbol, linewidths=0.8, label=label)

    found, extra, missed = predicted & known, predicted - known, known - predicted
    if ref_pairs is None:
        mark(predicted, False, _PRED_ONLY, f"predicted ({len(predicted)})", "o")
    else:
        mark(found, False, _BOTH, f"predicted, in reference ({len(found)})", "o")
        mark(extra, False, _PRED_ONLY, f"predicted, not in reference ({len(extra)})", "o")
        mark(found, True, _BOTH, f"reference, found ({len(found)})", "s")
        mark(missed, True, _REF_ONLY, f"reference, missed ({len(missed)})", "s")
    map_ax.plot([0.5, length + 0.5], [0.5, length + 0.5], color="0.7", linewidth=0.6)
    for axis in (map_ax.xaxis, map_ax.yaxis, arc_ax.xaxis):
        axis.set_major_locator(MaxNLocator(integer=True))  # no position 1.5 on short RNAs
    if ref_pairs is None:
        map_ax.set_xlabel("j")
    else:
        map_ax.set_xlabel("upper: predicted (i, j)   lower: reference (j, i)")
    map_ax.set_ylabel("i")
    map_ax.set_title("pair map")
    if predicted or known:
        # Below the map: every corner of it can hold pairs.
        map_ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=7,
                      frameon=False, markerscale=max(1.0, 12 / marker))

    # Arc diagram.
    def draw(pairs, above: bool, colour: str, label: str):
        if pairs:
            arc_ax.add_collection(LineCollection(_arcs(sorted(pairs), above), colors=colour,
                                                 linewidths=0.9, label=label))

    if ref_pairs is None:
        draw(predicted, True, _PRED, "predicted")
    else:
        draw(found, True, _BOTH, "in both")
        draw(extra, True, _PRED_ONLY, "predicted only")
        draw(found, False, _BOTH, None)
        draw(missed, False, _REF_ONLY, "reference only")
    # Scaled by the length, never by this RNA's longest pair (which would blow a lone 1-nt-span
    # arc up to full height): the longest possible pair, 1 to L, just fits.
    reach = max(length - 1, 2) / 2 * 1.05
    arc_ax.set_xlim(0, length + 1)
    arc_ax.set_ylim(-reach if ref_pairs is not None else -0.05 * reach, reach)
    arc_ax.axhline(0, color="0.4", linewidth=0.8)
    arc_ax.set_yticks([])
    for side in ("left", "right", "top"):
        arc_ax.spines[side].set_visible(False)
    bottom_ax = arc_ax if track_ax is None else track_ax
    if track_ax is not None:
        values = np.asarray(pairing, dtype=float)
        paired = np.zeros(length, dtype=bool)
        if pred_pairs is not None and len(pred_pairs.pairs):
            paired[pred_pairs.pairs.ravel()] = True
        positions = np.arange(1, length + 1)
        track_ax.bar(positions, values, width=1.0, color=np.where(paired, "0.15", "0.7"), linewidth=0)
        # Above 1 only for the head's independent sigmoids; a partition function stays below.
        track_ax.set_ylim(0, max(1.0, float(values.max(initial=0.0)) * 1.05))
        track_ax.set_xlim(arc_ax.get_xlim())
        track_ax.set_ylabel("pairing\nprobability", fontsize=8)
        track_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        track_ax.set_title("per base (dark: paired in the prediction)", fontsize=8)
        arc_ax.set_xticks([])
    if sequence is not None and length <= 80:
        bottom_ax.set_xticks(range(1, length + 1), list(sequence), fontsize=6, fontfamily="monospace")
    else:
        bottom_ax.set_xlabel("position")
    if ref_pairs is not None:
        arc_ax.text(0.01, 0.98, "predicted", transform=arc_ax.transAxes, va="top", fontsize=8)
        arc_ax.text(0.01, 0.02, "reference", transform=arc_ax.transAxes, va="bottom", fontsize=8)
    if predicted or known:
        arc_ax.legend(loc="upper right", fontsize=7, framealpha=0.85)
    arc_ax.set_title("arc diagram")
    figure.suptitle(title or f"{length} nt")
    return figure
