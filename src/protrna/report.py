"""One report of several predictors on several reference sets: ``protrna evaluate --report DIR``.

Every predictor (ProtRNA, classical baselines from :mod:`protrna.baselines`, structure files)
is scored on every reference set with the original protocol (:mod:`protrna.metrics`), and for
predictors that give pair probabilities the expected F1 of :mod:`protrna.confidence` is set
beside the real one. The folder gets::

    report.md          strict and shifted F1, precision, recall (means over sequences) per set x
                       predictor, the correlation of expected with real F1, versions, the command
    report.json        the same numbers and more (all six metrics, F1 by length bin, pair
                       reliability bins), for programs
    f1_by_length.png   mean strict F1 by length bin, one panel per set
    reliability.png    pair probability against the fraction of reference pairs, per set
    <set>/<predictor>.tsv     per-sequence scores (and expected accuracy where there is one)
    <set>/<predictor>.jsonl   the same as computed, with the run's settings on the first line:
                       an interrupted run resumes from it, record by record, when rerun

A set is named after its file (``TS0`` for ``TS0.dbn``); a predictor after its baseline, model
or file (``mine`` for ``mine.dbn``, or ``NAME=path`` on the command line).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import re
import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from . import __version__
from .confidence import CONFIDENCE_COLUMNS, Reliability, correlation, expected_accuracy, read_confidence_table
from .metrics import METRICS, mean_scores, score
from .runtime.paths import check_output_folder, make_folder
from .runtime.resume import LineJournal, check_same_run, write_atomic
from .structure import BasePairs, StructureError, StructureRecord, check_nucleotides, decode_matrix, read_reference

logger = logging.getLogger(__name__)

#: Upper ends of the length bins of the F1-by-length plot and table (the last bin is open).
LENGTH_BINS: tuple[int, ...] = (50, 100, 150, 200, 300, 500, 1000)

#: The columns the Markdown table shows, in order.
SHOWN_METRICS: tuple[str, ...] = ("f1", "f1_shifted", "precision", "recall")

RELIABILITY_BINS = 10


# --- reference sets --------------------------------------------------------------------------


@dataclasses.dataclass
class ReferenceSet:
    """A reference file read whole: ``name`` (its stem), ``path`` and ``records``."""

    name: str
    path: Path
    records: list[StructureRecord]

    @property
    def digest(self) -> str:
        """SHA-256 of ids, sequences and pairs: rows on disk are reused only for the same set."""
        digest = hashlib.sha256()
        for record in self.records:
            digest.update(f"{record.id}\n{record.sequence}\n".encode())
            digest.update(record.pairs.pairs.tobytes())
        return digest.hexdigest()


def set_name(path: str | Path) -> str:
    """``TS0`` for ``TS0.dbn``, ``archiveII`` for ``archiveII.dbn.gz``, a folder's own name."""
    path = Path(path)
    name = path.resolve().name
    if path.is_dir():
        return name
    name = name[:-3] if name.lower().endswith(".gz") else name
    return Path(name).stem


def read_sets(paths: Sequence[str | Path], limit: int | None = None) -> list[ReferenceSet]:
    """Read every reference file (any :func:`protrna.structure.read_reference` format) before any
    prediction, so that a bad file stops the run at once, naming the file and record; ``limit``
    keeps the first records of each."""
    sets, seen = [], {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"reference {path} does not exist")
        name = set_name(path)
        if name in seen:
            raise ValueError(f"references {seen[name]} and {path} would both be called {name!r}; rename one")
        seen[name] = path
        records = read_reference(path)
        if not records:
            raise StructureError(f"{path}: no records")
        records = records[:limit] if limit is not None else records
        check_nucleotides(records)
        sets.append(ReferenceSet(name, path, records))
    return sets


# --- predictors ------------------------------------------------------------------------------


@dataclasses.dataclass
class Predicted:
    """One prediction: ``pairs`` as scored (pairs, or a 0/1 matrix for the model's raw map) and,
    when the predictor gives them, ``probabilities`` (symmetric ``(L, L)``)."""

    id: str
    pairs: BasePairs | np.ndarray
    probabilities: np.ndarray | None = None


class Predictor:
    """What the report needs of a predictor: a ``name`` for tables, a ``version``, a one-line
    ``method``, whether it ``gives_probabilities``, and :meth:`predict`."""

    name: str = "predictor"
    version: str = ""
    method: str = ""
    gives_probabilities: bool = False
    cached = True  # rows are kept in <set>/<name>.jsonl and reused by a rerun

    def settings(self) -> dict:
        """What the rows depend on, besides the reference set."""
        return {"predictor": self.name, "version": self.version, "method": self.method}

    def predict(self, records: Sequence[StructureRecord]) -> Iterator[Predicted]:
        raise NotImplementedError


class BaselinePredictor(Predictor):
    """A classical folder of :data:`protrna.baselines.BASELINES`, one RNA at a time."""

    def __init__(self, key: str):
        from .baselines import BASELINES, require_baseline

        require_baseline(key)  # one clear line now if it is not installed, not after hours of work
        baseline = BASELINES[key]
        self.key, self.baseline = key, baseline
        self.name, self.version, self.method = baseline.name, baseline.version, baseline.method
        self.gives_probabilities = baseline.gives_probabilities

    def predict(self, records):
        for record in records:
            folded = self.baseline.fold(record.sequence)
            yield Predicted(record.id, folded.pairs, folded.probabilities)


class ModelPredictor(Predictor):
    """ProtRNA (language model + head): ``probabilities > threshold`` scored as is, several
    partners per base allowed, as the original ``test_downstream_ss.py`` does."""

    gives_probabilities = True

    def __init__(self, predictor, threshold: float | None = None, name: str = "ProtRNA", weights: str = ""):
        self.predictor = predictor
        self.threshold = predictor.head.config.threshold if threshold is None else threshold
        self.name, self.version = name, f"protrna {__version__}"
        self.weights = weights or (f"{getattr(predictor.lm, 'source', 'in-memory model')} + "
                                   f"{getattr(predictor.head, 'source', 'in-memory head')}")
        dtype = str(predictor.lm.dtype).removeprefix("torch.")
        self.method = f"{self.weights}, {dtype}, pairs: probability > {self.threshold} (original protocol)"

    def predict(self, records):
        for result in self.predictor.predict([(r.id, r.sequence) for r in records]):
            yield Predicted(result.id, decode_matrix(result.probabilities, self.threshold), result.probabilities)


class FilePredictor(Predictor):
    """Structures read from a file (``.dbn``, bpseq/ct ...) and matched to each set by id.

    A ``confidence.tsv`` beside the file (as ``protrna fold`` writes it) supplies the expected
    F1 of its records; reliability bins need the maps, so there are none for files.
    """

    cached = False  # reading and scoring a file is quick, and the file may have changed

    def __init__(self, path: str | Path, name: str | None = None):
        from .evaluate import predictor_name, read_predictions

        self.path = Path(path)
        self.name = name or predictor_name(self.path)
        self.method = f"structures from {self.path}"
        self.records = read_predictions(self.path)
        by_id: dict[str, StructureRecord] = {}
        for record in self.records:
            if record.id in by_id:
                raise StructureError(f"{record.source}: prediction id {record.id!r} appears twice")
            by_id[record.id] = record
        self.by_id = by_id
        table = self.path.parent / "confidence.tsv" if self.path.is_file() else self.path / "confidence.tsv"
        self.confidence = read_confidence_table(table) if table.exists() else {}
        self.gives_probabilities = bool(self.confidence)


def parse_predictions_option(value: str) -> tuple[str | None, Path]:
    """``NAME=PATH`` or ``PATH`` (then the name comes from the file) for ``--predictions``.

    >>> parse_predictions_option("mxfold2=runs/mx.dbn")
    ('mxfold2', PosixPath('runs/mx.dbn'))
    """
    name, separator, path = value.partition("=")
    if separator and name and "/" not in name and not Path(value).exists():
        return name, Path(path)
    return None, Path(value)


# --- scoring ---------------------------------------------------------------------------------

_SETTINGS_KEY = "settings"


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "predictor"


def _row(reference: StructureRecord, predicted: Predicted, seconds: float) -> dict:
    """Scores of one prediction, its expected accuracy when it has probabilities, and the counts
    of its pair-reliability bins."""
    row = {"id": reference.id, "length": len(reference), **score(predicted.pairs, reference.pairs)}
    if predicted.probabilities is not None:
        source = f"record {reference.id!r}"
        row.update(expected_accuracy(predicted.probabilities, predicted.pairs, source=source).as_dict())
        bins = Reliability(RELIABILITY_BINS)
        bins.add(predicted.probabilities, reference.pairs)
        row["reliability"] = [bins.cells.tolist(), bins.true_pairs.tolist(), bins.probability_sum.round(9).tolist()]
    row["seconds"] = round(seconds, 4)
    return row


def _json_row(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None  # a torn last line, as a kill mid-write leaves
    return row if isinstance(row, dict) and "id" in row else None


def _read_cache(journal: LineJournal, settings: Mapping) -> dict[str, dict]:
    """Rows of an earlier run of the same settings (a torn tail is cut off); other settings
    raise :class:`~protrna.runtime.resume.OtherRunError` naming what changed, before anything in
    the file is touched."""
    if not journal.exists():
        return {}
    with open(journal.path, encoding="utf-8") as handle:
        first = handle.readline()
    try:
        recorded = json.loads(first)[_SETTINGS_KEY]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(f"{journal.path}: not a report cache (no settings line); delete it to start over") from None
    check_same_run(journal.path, recorded, settings, finished=False)
    _, records = journal.read(accept=lambda record: _json_row(record[0]) is not None)
    return {row["id"]: row for row in (_json_row(record[0]) for record in records)}


def score_set(
    reference_set: ReferenceSet,
    predictor: Predictor,
    output_dir: str | Path | None = None,
    *,
    on_missing: str = "error",
    on_sequence_mismatch: str = "error",
    progress: bool = True,
) -> dict:
    """Rows of ``predictor`` on one set (with ``output_dir``: kept on disk and resumed), as
    ``{"rows": [...], "missing": [...], "unmatched_ids": set}`` in reference order."""
    if isinstance(predictor, FilePredictor):
        return _score_file(reference_set, predictor, on_missing, on_sequence_mismatch)
    from tqdm.auto import tqdm

    by_id = {record.id: record for record in reference_set.records}
    rows: dict[str, dict] = {}
    sink = None
    if output_dir is not None and predictor.cached:
        folder = Path(output_dir) / _file_name(reference_set.name)
        folder.mkdir(parents=True, exist_ok=True)
        journal = LineJournal(folder / f"{_file_name(predictor.name)}.jsonl", header_lines=1)
        settings = {"reference": str(reference_set.path.resolve()), "reference_sha256": reference_set.digest,
                    **predictor.settings()}
        rows = {k: v for k, v in _read_cache(journal, settings).items() if k in by_id}
        # Rewritten whole (rows of records no longer in the set dropped), then appended to.
        journal.start([json.dumps({_SETTINGS_KEY: settings})], ([json.dumps(row)] for row in rows.values()))
        sink = journal.appending()
        if rows:
            logger.info("%s on %s: %d of %d records from an earlier run", predictor.name, reference_set.name,
                        len(rows), len(by_id))
    reused = len(rows)
    todo = [record for record in reference_set.records if record.id not in rows]
    try:
        with tqdm(total=len(by_id), initial=len(rows), unit="seq", disable=not progress, dynamic_ncols=True,
                  desc=f"{reference_set.name}: {predictor.name}") as bar:
            start = time.perf_counter()
            for predicted in predictor.predict(todo):
                now = time.perf_counter()
                reference = by_id[predicted.id]
                row = _row(reference, predicted, now - start)
                rows[predicted.id] = row
                if sink is not None:
                    sink.append([json.dumps(row)])
                bar.update(1)
                start = time.perf_counter()
    finally:
        if sink is not None:
            sink.close()
    return {"rows": [rows[record.id] for record in reference_set.records], "missing": [], "unmatched_ids": set(),
            "reused": reused}


def _score_file(reference_set: ReferenceSet, predictor: FilePredictor, on_missing: str,
                on_sequence_mismatch: str) -> dict:
    from .evaluate import score_predictions

    ids = {record.id for record in reference_set.records}
    mine = {key: record for key, record in predictor.by_id.items() if key in ids}
    evaluation = score_predictions(reference_set.records, mine, predictor=f"{predictor.name} on {reference_set.name}",
                                   on_missing=on_missing, on_sequence_mismatch=on_sequence_mismatch)
    rows = []
    for row in evaluation.rows:
        known = predictor.confidence.get(row["id"])
        if known is not None:
            row.update({name: known[name] for name in CONFIDENCE_COLUMNS})
        rows.append(row)
    return {"rows": rows, "missing": evaluation.missing, "unmatched_ids": set(predictor.by_id) - ids}


# --- summaries -------------------------------------------------------------------------------


def length_bins(rows: Sequence[Mapping], edges: Sequence[int] = LENGTH_BINS) -> list[dict]:
    """Mean strict and shifted F1 of the rows in each length bin ``[low, high)`` (empty bins left
    out); ``high`` is ``None`` for the last, open bin.

    >>> length_bins([{"length": 40, "f1": 0.5, "f1_shifted": 0.6}, {"length": 60, "f1": 1.0, "f1_shifted": 1.0}], (50,))
    [{'low': 0, 'high': 50, 'n': 1, 'f1': 0.5, 'f1_shifted': 0.6}, {'low': 50, 'high': None, 'n': 1, 'f1': 1.0, 'f1_shifted': 1.0}]
    """
    bounds = [0, *edges, None]
    result = []
    for low, high in zip(bounds[:-1], bounds[1:]):
        inside = [row for row in rows if row["length"] >= low and (high is None or row["length"] < high)]
        if inside:
            result.append({"low": low, "high": high, "n": len(inside),
                           "f1": sum(r["f1"] for r in inside) / len(inside),
                           "f1_shifted": sum(r["f1_shifted"] for r in inside) / len(inside)})
    return result


def _nan_to_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def summarize(set_name: str, predictor: Predictor, scored: Mapping) -> dict:
    """The JSON entry of one set x predictor: n, six means, confidence and its calibration."""
    rows = scored["rows"]
    entry = {
        "set": set_name, "predictor": predictor.name, "n": len(rows),
        "means": mean_scores({name: row[name] for name in METRICS} for row in rows),
        "missing": scored["missing"],
        "seconds": round(sum(row.get("seconds", 0.0) for row in rows), 2) if predictor.cached else None,
        "reused_rows": scored.get("reused", 0),
        "by_length": length_bins(rows),
    }
    with_confidence = [row for row in rows if "expected_f1" in row]
    if with_confidence:
        entry["confidence"] = {
            "n": len(with_confidence),
            "mean_expected_f1": sum(r["expected_f1"] for r in with_confidence) / len(with_confidence),
            "mean_f1": sum(r["f1"] for r in with_confidence) / len(with_confidence),
            "f1": correlation([r["expected_f1"] for r in with_confidence], [r["f1"] for r in with_confidence]),
            "precision": correlation([r["expected_precision"] for r in with_confidence],
                                     [r["precision"] for r in with_confidence]),
            "recall": correlation([r["expected_recall"] for r in with_confidence],
                                  [r["recall"] for r in with_confidence]),
        }
        binned = [row["reliability"] for row in with_confidence if "reliability" in row]
        if binned:
            bins = Reliability(RELIABILITY_BINS)
            for cells, true_pairs, probability_sum in binned:
                bins.cells += np.asarray(cells, dtype=np.int64)
                bins.true_pairs += np.asarray(true_pairs, dtype=np.int64)
                bins.probability_sum += np.asarray(probability_sum)
            entry["reliability"] = {
                "bins": bins.table(),
                "expected_calibration_error": bins.expected_calibration_error(),
                "expected_calibration_error_from_0.1": bins.expected_calibration_error(0.1),
            }
    return entry


def _cell(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_markdown(report: Mapping) -> str:
    """The report as Markdown: a results table (set x predictor), predictors, calibration."""
    lines = [f"# Structure prediction report ({report['protrna_version']})", ""]
    lines += [
        "Means over sequences, original protocol (`test_downstream_ss.py`): strict F1, precision and recall "
        "on the lower triangle; shifted F1 as RiNALMo (one-base shift allowed). Expected F1: "
        "`2 E[TP] / (|S| + E[N])` from the predictor's pair probabilities (see `protrna.confidence`), "
        "which assumes calibrated, independent pair probabilities; r and rho: Pearson and Spearman "
        "correlation of expected with real strict F1 over the set; ECE: pair-level expected "
        "calibration error, the cell-weighted gap between the fraction of reference pairs and the mean "
        "probability in 10 probability bins, over the cells of probability 0.1 or more (the [0, 0.1) bin "
        "holds nearly all cells and would make any ECE small; `report.json` has both and the bins).",
        "",
        "| set | predictor | n | strict F1 | shifted F1 | precision | recall | expected F1 | r | rho | ECE | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in report["results"]:
        means, confidence = entry["means"], entry.get("confidence") or {}
        reliability = entry.get("reliability") or {}
        seconds = entry.get("seconds")
        lines.append("| " + " | ".join([
            entry["set"], entry["predictor"], str(entry["n"]), *(_cell(means[name]) for name in SHOWN_METRICS),
            _cell(confidence.get("mean_expected_f1")), _cell((confidence.get("f1") or {}).get("pearson")),
            _cell((confidence.get("f1") or {}).get("spearman")),
            _cell(reliability.get("expected_calibration_error_from_0.1")),
            "–" if seconds is None else f"{seconds:.0f}",
        ]) + " |")
    lines += ["", "## Reference sets", "", "| set | file | records |", "|---|---|---|"]
    for name, info in report["sets"].items():
        lines.append(f"| {name} | `{info['path']}` | {info['n']} |")
    lines += ["", "## Predictors", "", "| predictor | version | method |", "|---|---|---|"]
    for name, info in report["predictors"].items():
        lines.append(f"| {name} | {info['version'] or '–'} | {info['method']} |")
    missing = [(e["set"], e["predictor"], len(e["missing"])) for e in report["results"] if e["missing"]]
    if missing:
        lines += ["", "Records without a prediction: " + "; ".join(f"{p} on {s}: {n}" for s, p, n in missing)]
    reused = sum(e.get("reused_rows", 0) for e in report["results"])
    total = sum(e["n"] for e in report["results"])
    lines += ["", "## Run", "", f"- command: `{report['command']}`", f"- machine: {report['machine']}",
              f"- wall time of this run: {report['wall_seconds']:.0f} s, with {reused} of {total} rows reused from "
              "the caches of an earlier run (seconds in the table: prediction time summed over the records, "
              "whichever run computed them)",
              "- F1 by length: `f1_by_length.png`; calibration of the pair probabilities: `reliability.png`; every number with more digits, F1 by length bin and the "
              "reliability bins: `report.json`; per-sequence rows: `<set>/<predictor>.tsv`", ""]
    return "\n".join(lines)


# Okabe-Ito: colour-blind safe, one per predictor in the order of the report.
_COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


def plot_by_length(report: Mapping, path: str | Path) -> Path:
    """Mean strict F1 by length bin, one panel per set, one line per predictor (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sets = list(report["sets"])
    columns = min(3, len(sets))
    rows = math.ceil(len(sets) / columns)
    figure = Figure(figsize=(5.2 * columns, 3.9 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    predictors = list(report["predictors"])
    colours = _COLOURS
    labels = [f"<{high}" if low == 0 else (f"{low}+" if high is None else f"{low}-{high - 1}")
              for low, high in zip((0, *LENGTH_BINS), (*LENGTH_BINS, None))]
    for axis, name in zip(axes, sets):
        for k, predictor in enumerate(predictors):
            entry = next((e for e in report["results"] if e["set"] == name and e["predictor"] == predictor), None)
            if entry is None or not entry["by_length"]:
                continue
            x = [list((0, *LENGTH_BINS)).index(b["low"]) for b in entry["by_length"]]
            axis.plot(x, [b["f1"] for b in entry["by_length"]], marker="o", color=colours[k % len(colours)],
                      label=predictor, linewidth=1.4, markersize=4)
        counts = {}
        for entry in report["results"]:
            if entry["set"] == name:
                for b in entry["by_length"]:
                    counts[b["low"]] = max(counts.get(b["low"], 0), b["n"])
        ticks = sorted(list((0, *LENGTH_BINS)).index(low) for low in counts)
        axis.set_xticks(ticks, [f"{labels[t]}\n(n={counts[(0, *LENGTH_BINS)[t]]})" for t in ticks], fontsize=7)
        axis.set_ylim(0, 1)
        axis.set_ylabel("mean strict F1")
        axis.set_title(f"{name} ({report['sets'][name]['n']} RNAs)", fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="lower left")
    return _save_panels(figure, axes[len(sets):], "strict F1 by RNA length (nt)", path)


def plot_reliability(report: Mapping, path: str | Path) -> Path | None:
    """Reliability curves (mean pair probability against the fraction of reference pairs, per
    probability bin), one panel per set, one line per predictor with probabilities; ``None`` when
    no predictor has any."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    entries = [e for e in report["results"] if e.get("reliability")]
    if not entries:
        return None
    sets = list(dict.fromkeys(e["set"] for e in entries))
    predictors = list(report["predictors"])
    columns = min(4, len(sets))
    rows = math.ceil(len(sets) / columns)
    figure = Figure(figsize=(3.6 * columns, 3.6 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, name in zip(axes, sets):
        axis.plot([0, 1], [0, 1], color="0.6", linewidth=0.8, linestyle="--")
        for entry in (e for e in entries if e["set"] == name):
            bins = [b for b in entry["reliability"]["bins"] if b["cells"]]
            colour = _COLOURS[predictors.index(entry["predictor"]) % len(_COLOURS)]
            axis.plot([b["mean_probability"] for b in bins], [b["fraction_true"] for b in bins], marker="o",
                      markersize=3, color=colour, label=entry["predictor"])
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_aspect("equal")
        axis.set_xlabel("mean pair probability in bin", fontsize=8)
        axis.set_ylabel("fraction that are reference pairs", fontsize=8)
        axis.set_title(name, fontsize=10)
        axis.legend(fontsize=7, loc="upper left")
    return _save_panels(figure, axes[len(sets):], "pair-probability reliability (diagonal: calibrated)", path)


def _write_tsv(rows: Sequence[Mapping], path: Path) -> None:
    columns = ["id", "length", *METRICS]
    if any("expected_f1" in row for row in rows):
        columns += list(CONFIDENCE_COLUMNS)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\t".join(columns) + "\n")
        for row in rows:
            fields = []
            for column in columns:
                value = row.get(column, "")
                fields.append(f"{value:.6f}" if isinstance(value, float) else str(value))
            handle.write("\t".join(fields) + "\n")


def machine_description() -> str:
    """Processor, core count and Python, for the record of where numbers were measured."""
    processor = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
        processor = model or processor
    except OSError:
        pass
    return f"{processor}, {os.cpu_count()} cores, {platform.system()}, Python {platform.python_version()}"


def build_report(
    sets: Sequence[ReferenceSet],
    predictors: Sequence[Predictor],
    output_dir: str | Path,
    *,
    on_missing: str = "error",
    on_sequence_mismatch: str = "error",
    progress: bool = True,
    command: str = "",
) -> dict:
    """Score every predictor on every set and write the report folder (module doc); returns the
    JSON report. ``report.md``/``report.json`` are rewritten after each set, so a long run shows
    what it has; the plot is drawn at the end."""
    if not sets or not predictors:
        raise ValueError("a report needs at least one reference set and one predictor")
    names = [p.name for p in predictors]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"two predictors are called {twice[0]!r}; name them apart (--predictions NAME=PATH)")
    output_dir = make_folder(output_dir)
    start = time.perf_counter()
    report = {
        "protrna_version": f"protrna {__version__}",
        "command": command,
        "machine": machine_description(),
        "protocol": "ProtRNA test_downstream_ss.py: strict scores on the lower triangle, shifted F1 as RiNALMo; "
                    "plain means over sequences",
        "sets": {s.name: {"path": str(s.path), "n": len(s.records)} for s in sets},
        "predictors": {p.name: {"version": p.version, "method": p.method, "gives_probabilities": p.gives_probabilities}
                       for p in predictors},
        "results": [],
        "wall_seconds": 0.0,
    }
    unmatched: dict[str, set] = {}
    for reference_set in sets:
        for predictor in predictors:
            scored = score_set(reference_set, predictor, output_dir, on_missing=on_missing,
                               on_sequence_mismatch=on_sequence_mismatch, progress=progress)
            if isinstance(predictor, FilePredictor):
                unmatched[predictor.name] = unmatched.get(predictor.name, set(scored["unmatched_ids"])) & scored["unmatched_ids"]
            folder = output_dir / _file_name(reference_set.name)
            folder.mkdir(parents=True, exist_ok=True)
            _write_tsv(scored["rows"], folder / f"{_file_name(predictor.name)}.tsv")
            report["results"].append(summarize(reference_set.name, predictor, scored))
        report["wall_seconds"] = time.perf_counter() - start
        _write_report(report, output_dir)
    for name, ids in unmatched.items():
        if ids:
            logger.warning("%s: %d predictions are in none of the reference sets (e.g. %r)", name, len(ids), sorted(ids)[0])
    plot_by_length(report, output_dir / "f1_by_length.png")
    plot_reliability(report, output_dir / "reliability.png")
    return report


def _write_report(report: Mapping, output_dir: Path) -> None:
    for name, text in (("report.json", json.dumps(_nan_to_none(report), indent=2) + "\n"),
                       ("report.md", format_markdown(report))):
        write_atomic(output_dir / name, text)


def format_text_table(report: Mapping) -> str:
    """A short plain-text table of the report for the terminal."""
    header = ["set", "predictor", "n", "f1", "f1_shifted", "precision", "recall", "expected_f1", "r(F1)"]
    lines = [header]
    for entry in report["results"]:
        confidence = entry.get("confidence") or {}
        lines.append([entry["set"], entry["predictor"], str(entry["n"]),
                      *(_cell(entry["means"][m], 4) for m in SHOWN_METRICS),
                      _cell(confidence.get("mean_expected_f1"), 4), _cell((confidence.get("f1") or {}).get("pearson"), 3)])
    widths = [max(len(line[k]) for line in lines) for k in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


# --- command line (protrna evaluate --report) ------------------------------------------------


def command_line(args) -> str:
    """The ``protrna evaluate --report`` command that gives this report, rebuilt from the parsed
    options (so that it is the same whether the job ran from a shell or from Python)."""
    parts = ["protrna evaluate", "--report", str(args.report), "--reference", *map(str, args.reference)]
    if args.baseline:
        parts += ["--baseline", *dict.fromkeys(args.baseline)]
    if args.predictions:
        parts += ["--predictions", *args.predictions]
    for flag, value, default in (("--on-missing", args.on_missing, "error"),
                                 ("--on-sequence-mismatch", args.on_sequence_mismatch, "error"),
                                 ("--limit", args.limit, None)):
        if value != default:
            parts += [flag, str(value)]
    if args.no_model:
        parts.append("--no-model")
    for name in ("model", "head", "threshold", "dtype", "device", "max_tokens"):
        if getattr(args, name, None) is not None:
            parts += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return " ".join(parts)


def run_from_args(args) -> int:
    """``protrna evaluate --report DIR``: the predictors and sets named on the command line."""
    from .structure import check_threshold

    model_options = [f"--{n.replace('_', '-')}" for n in ("model", "head", "threshold", "dtype", "device", "max_tokens")
                     if getattr(args, n, None) is not None]
    if args.no_model and model_options:
        raise ValueError(f"{', '.join(model_options)} apply to running the model, which --no-model leaves out")
    check_threshold(args.threshold)
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be at least 1")
    if args.per_sequence is not None or args.summary is not None:
        raise ValueError("with --report the per-sequence tables and the summary go into the report folder; "
                         "leave out --per-sequence and --summary")
    # Everything that can fail fast does, before any prediction: baselines, files, references.
    predictors: list[Predictor] = [BaselinePredictor(key) for key in dict.fromkeys(args.baseline)]
    for value in args.predictions or []:
        name, path = parse_predictions_option(value)
        predictors.append(FilePredictor(path, name))
    sets = read_sets(args.reference, args.limit)
    check_output_folder(args.report, "--report")
    if not args.no_model:
        from .runtime import DEFAULT_HEAD, DEFAULT_MODEL, load_predictor

        model, head = args.model or DEFAULT_MODEL, args.head or DEFAULT_HEAD
        predictor = load_predictor(model, head, dtype=args.dtype or "float32", device=args.device,
                                   max_tokens=getattr(args, "max_tokens", None))
        predictors.insert(0, ModelPredictor(predictor, args.threshold))
    if not predictors:
        raise ValueError("--no-model leaves no predictor: add --baseline or --predictions")
    if not args.predictions:
        unused = [flag for flag, value in (("--on-missing", args.on_missing),
                                           ("--on-sequence-mismatch", args.on_sequence_mismatch)) if value != "error"]
        if unused:
            raise ValueError(f"{', '.join(unused)} apply to --predictions; the model and the baselines predict "
                             "every reference")
    command = command_line(args)
    report = build_report(sets, predictors, args.report, on_missing=args.on_missing,
                          on_sequence_mismatch=args.on_sequence_mismatch, progress=not args.quiet, command=command)
    print(format_text_table(report))
    print(f"report: {Path(args.report) / 'report.md'}")
    return 0


def _save_panels(figure, unused_axes, title: str, path: str | Path) -> Path:
    """Hide the grid's panels that no set filled, title the figure and write it."""
    for axis in unused_axes:
        axis.set_visible(False)
    figure.suptitle(title)
    path = Path(path)
    figure.savefig(path, dpi=110)
    return path
