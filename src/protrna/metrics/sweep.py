"""Reports of a threshold sweep: the mean F1 at each threshold as JSON and a small PNG, and the
head saved with the chosen threshold.

The sweep itself (which F1, which mean, which tie rule) is :func:`protrna.train.ss.select_threshold`,
shared by ``protrna train-ss`` and ``protrna evaluate --sweep``; this module only writes it down.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from . import Protocol, get_protocol


def sweep_summary(
    grid: Sequence[float],
    mean_f1: Sequence[float],
    threshold: float,
    protocol: str | Protocol,
    *,
    valid: str,
    n: int,
) -> dict:
    """JSON-ready record of a sweep: protocol, the set it ran on, the curve and the choice.

    >>> sweep_summary([0.1, 0.2], [0.5, 0.75], 0.2, "protrna", valid="VL0.dbn", n=3)["curve"]
    {'0.1': 0.5, '0.2': 0.75}
    """
    protocol = get_protocol(protocol)
    curve = {str(t): float(f) for t, f in zip(grid, mean_f1)}
    return {
        "protocol": protocol.name,
        "metric": protocol.f1,
        "valid": valid,
        "n": n,
        "threshold": threshold,
        "best_mean_f1": curve[str(threshold)],
        "selection": (
            f"maximum mean per-sequence {protocol.f1} of p > t over the grid; among equal means "
            "(within 1e-12) the middle threshold (protrna.train.ss.pick_threshold)"
        ),
        "curve": curve,
    }


def plot_sweep(summary: dict, path: str | Path, dpi: int = 110) -> Path:
    """A PNG of the mean F1 against the threshold, the choice marked; Agg, no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    thresholds = np.array([float(t) for t in summary["curve"]])
    means = np.array(list(summary["curve"].values()))
    figure = Figure(figsize=(5.5, 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.plot(thresholds, means, marker="o", markersize=3, color="#0072B2")
    axes.axvline(summary["threshold"], color="#D55E00", linestyle="--",
                 label=f"chosen {summary['threshold']:g} ({summary['best_mean_f1']:.4f})")
    axes.set_xlabel("threshold t (pair if p > t)")
    axes.set_ylabel(f"mean {summary['metric']}")
    axes.set_title(f"{Path(summary['valid']).name}, n = {summary['n']}, protocol {summary['protocol']}",
                   fontsize=10)
    axes.legend(loc="best", fontsize=8)
    axes.grid(alpha=0.3)
    path = Path(path)
    figure.savefig(path, dpi=dpi)
    return path


def write_sweep(summary: dict, directory: str | Path) -> tuple[Path, Path]:
    """``threshold_sweep.json`` and ``threshold_sweep.png`` in ``directory`` (created)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "threshold_sweep.json"
    json_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return json_path, plot_sweep(summary, directory / "threshold_sweep.png")


def check_head_output(directory: str | Path, protected: Sequence[str | Path]) -> Path:
    """``directory`` resolved, or ``ValueError`` if writing a head there would overwrite (or go
    inside) what must stay as it is: the weight cache, the head being swept, or a directory that
    is not a saved head (a previous sweep's head is replaced)."""
    target = Path(directory).expanduser().resolve()
    for path in protected:
        path = Path(path).expanduser().resolve()
        if target == path or path in target.parents or target in path.parents:
            raise ValueError(
                f"{directory} would overwrite or go inside {path}; the swept head is saved as a copy: "
                "name a new directory (e.g. runs/sweep/head)"
            )
    if target.exists() and not (target / "config.json").is_file():
        raise ValueError(f"{directory} exists and is not a saved head; it would be replaced: name a new directory")
    return target


def save_head_with_threshold(head, threshold: float, directory: str | Path, facts: dict) -> Path:
    """Save a copy of ``head`` with ``config.threshold = threshold`` (``save_pretrained``) and
    ``facts`` as ``threshold_sweep.json``, through a temporary directory: an interrupted save
    leaves the previous content of ``directory`` whole."""
    directory = Path(directory)
    copy = type(head)(dataclasses.replace(head.config, threshold=threshold))
    copy.load_state_dict(head.state_dict())
    temporary = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    copy.save_pretrained(temporary)
    (temporary / "threshold_sweep.json").write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    if directory.exists():
        previous = directory.with_name(directory.name + ".old")
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(directory, previous)
        os.replace(temporary, directory)
        shutil.rmtree(previous)
    else:
        os.replace(temporary, directory)
    return directory
