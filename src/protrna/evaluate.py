"""Scoring predicted structures against a reference set: per-sequence table, summary, printout.

This is the scoring layer of ``protrna evaluate``. Predictions are matched to reference records
by id and may be :class:`~protrna.structure.StructureRecord` (read from a ``.dbn`` file, as
``protrna fold`` writes them; their sequence is checked against the reference),
:class:`~protrna.structure.BasePairs`, or thresholded ``(L, L)`` matrices (what the original
protocol scores, several partners per base included). Metrics and the two scoring protocols
(``protrna``, the default, and ``rnabench``): :mod:`protrna.metrics`.

>>> from protrna.structure import BasePairs, StructureRecord
>>> reference = [StructureRecord("r1", "GGGAAACCC", BasePairs.from_dot_bracket("(((...)))"))]
>>> predicted = {"r1": BasePairs.from_dot_bracket("((.....))")}
>>> result = score_predictions(reference, predicted, predictor="toy")
>>> print(format_table([result]))
predictor  n  f1      mcc     precision  recall  accuracy  f1_shifted
toy        1  0.8000  0.8044  1.0000     0.6667  0.9722    0.8000
protocol protrna: f1 strict; f1_shifted allows a one-base shift (RiNALMo); means over sequences
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
from pathlib import Path
from typing import Iterable, Mapping, Sequence, Union

import numpy as np

from .baselines import BASELINES
from .digest import records_digest
from .metrics import METRICS, Protocol, get_protocol, score
from .options import add_options
from .runtime import DEFAULT_HEAD, DEFAULT_MODEL, load_predictor
from .runtime.paths import check_output_file, make_parent
from .runtime.resume import LineJournal, check_same_run
from .structure import BasePairs, StructureError, StructureRecord, check_nucleotides, check_threshold, read_reference

logger = logging.getLogger(__name__)

#: What the scores of the default protocol mean, stored with every summary.
PROTOCOL = get_protocol("protrna").description

Prediction = Union[StructureRecord, BasePairs, np.ndarray]


@dataclasses.dataclass
class Evaluation:
    """Scores of one predictor on one reference set.

    ``rows`` holds one dict per scored sequence (``id``, ``length`` and the protocol's metrics),
    in reference order; ``missing`` lists reference ids without a prediction, ``unmatched``
    prediction ids that are not in the reference.
    """

    predictor: str
    rows: list[dict]
    missing: list[str] = dataclasses.field(default_factory=list)
    unmatched: list[str] = dataclasses.field(default_factory=list)
    settings: dict = dataclasses.field(default_factory=dict)
    protocol: Protocol = dataclasses.field(default_factory=lambda: get_protocol("protrna"))

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def means(self) -> dict[str, float]:
        metrics = self.protocol.metrics
        return self.protocol.mean_scores({name: row[name] for name in metrics} for row in self.rows)

    def summary(self) -> dict:
        """JSON-ready: protocol, predictor, n, the means, settings, missing and unmatched ids."""
        return {
            "protocol": self.protocol.name,
            "predictor": self.predictor,
            "n": self.n,
            "means": self.means,
            "settings": self.settings,
            "missing": self.missing,
            "unmatched": self.unmatched,
        }


def _ids_text(ids: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return f"{len(ids)} ({shown}{', ...' if len(ids) > limit else ''})"


def _normalised(sequence: str) -> str:
    return sequence.upper().replace("T", "U")


def _checked_pairs(
    prediction: StructureRecord, reference: StructureRecord, on_sequence_mismatch: str
) -> BasePairs:
    """The predicted pairs, once the prediction's sequence is known to be the reference's."""
    if len(prediction.sequence) != len(reference.sequence):
        raise StructureError(
            f"{prediction.label}: predicted sequence is {len(prediction.sequence)} nt, reference "
            f"({reference.label}) is {len(reference.sequence)} nt"
        )
    predicted, expected = _normalised(prediction.sequence), _normalised(reference.sequence)
    if predicted != expected:
        first = next(k for k, (a, b) in enumerate(zip(predicted, expected)) if a != b)
        message = (
            f"{prediction.label}: sequence differs from the reference at position {first + 1} "
            f"({prediction.sequence[first]!r} vs {reference.sequence[first]!r})"
        )
        if on_sequence_mismatch == "error":
            raise StructureError(
                f"{message}; pass on_sequence_mismatch='warn' (--on-sequence-mismatch warn) to score anyway"
            )
        logger.warning("%s; scored anyway", message)
    return prediction.pairs


def read_predictions(path: str | Path) -> list[StructureRecord]:
    """Predicted structures from a 3-line ``.dbn`` file (or any :func:`read_reference` format)."""
    return read_reference(path)


def score_predictions(
    references: Iterable[StructureRecord],
    predictions: Mapping[str, Prediction] | Iterable[StructureRecord],
    *,
    predictor: str = "prediction",
    on_missing: str = "error",
    on_sequence_mismatch: str = "error",
    settings: Mapping | None = None,
    protocol: str | Protocol = "protrna",
) -> Evaluation:
    """Score each reference record against the prediction with the same id.

    Args:
        references: records with the reference pairs (:func:`protrna.structure.read_reference`).
        predictions: a mapping id -> record, :class:`BasePairs` or 0/1 ``(L, L)`` matrix, or an
            iterable of records. Records must have the reference's sequence (case and T/U aside).
        predictor: name shown in tables and summaries.
        on_missing: a reference id without prediction is an ``"error"`` (default), is left out
            (``"skip"``, with a warning; ``n`` shrinks), or scores as no pairs (``"empty"``).
        on_sequence_mismatch: a prediction whose sequence differs from the reference's (same
            length) is an ``"error"`` (default) or a ``"warn"``-ing. A length mismatch is always
            an error: there is nothing to score.
        settings: extra entries for the summary (threshold, file names, model ...).
        protocol: ``"protrna"`` (the original test_downstream_ss.py) or ``"rnabench"``
            (RnaBench 0.1.2's folding benchmark, which leaves out references without pairs; their
            ids are listed in the settings as ``left_out_without_pairs``).

    Prediction ids not in the reference are logged and listed in ``unmatched``.
    """
    protocol = get_protocol(protocol)
    if on_missing not in ("error", "skip", "empty"):
        raise ValueError(f"on_missing must be 'error', 'skip' or 'empty', not {on_missing!r}")
    if on_sequence_mismatch not in ("error", "warn"):
        raise ValueError(
            f"on_sequence_mismatch must be 'error' or 'warn', not {on_sequence_mismatch!r}"
        )
    references, left_out = _scored_references(references, protocol)
    if not isinstance(predictions, Mapping):
        by_id: dict[str, Prediction] = {}
        for record in predictions:
            if record.id in by_id:
                raise StructureError(f"{record.source}: prediction id {record.id!r} appears twice")
            by_id[record.id] = record
        predictions = by_id
    reference_ids = {record.id for record in references} | set(left_out)
    missing = [record.id for record in references if record.id not in predictions]
    unmatched = [key for key in predictions if key not in reference_ids]
    if missing and on_missing == "error":
        hint = ""
        if unmatched:
            hint = f"; {_ids_text(unmatched)} prediction ids are not in the reference"
            folded = {key.casefold() for key in unmatched}
            if any(key.casefold() in folded for key in missing):
                hint += " (some differ from reference ids only in case)"
        raise ValueError(
            f"{predictor}: {_ids_text(missing)} reference sequences have no prediction{hint}; "
            "predict them, or pass on_missing='skip' or 'empty' (--on-missing on the command line)"
        )
    if missing:
        logger.warning(
            "%s: %s reference sequences have no prediction; %s", predictor, _ids_text(missing),
            "left out" if on_missing == "skip" else "scored as no pairs",
        )
    if unmatched:
        logger.warning(
            "%s: %s predictions are not in the reference; ignored", predictor, _ids_text(unmatched)
        )

    rows = []
    for reference in references:
        prediction = predictions.get(reference.id)
        if prediction is None:
            if on_missing == "skip":
                continue
            prediction = BasePairs(len(reference))
        if isinstance(prediction, StructureRecord):
            prediction = _checked_pairs(prediction, reference, on_sequence_mismatch)
        if isinstance(prediction, BasePairs):
            predicted_length = prediction.length
        else:
            predicted_length = np.shape(prediction)[0]
        if predicted_length != len(reference):
            raise StructureError(
                f"{predictor}, record {reference.id!r}: prediction is for {predicted_length} nt, "
                f"reference is {len(reference)} nt"
            )
        scores = _scorer(protocol)(prediction, reference.pairs)
        rows.append({"id": reference.id, "length": len(reference), **scores})
    if not rows:
        raise ValueError(f"{predictor}: no sequence to score")
    all_settings = {
        "protocol": protocol.description,
        **_left_out_settings(left_out),
        "on_missing": on_missing,
        "on_sequence_mismatch": on_sequence_mismatch,
        **(settings or {}),
    }
    return Evaluation(predictor, rows, missing, unmatched, all_settings, protocol)


def _scorer(protocol: Protocol):
    # The default protocol's scorer is this module's `score`, looked up at call time (tests swap it).
    return score if protocol.name == "protrna" else protocol.score


def _scored_references(references: Iterable[StructureRecord], protocol: Protocol):
    """The references the protocol scores, and the ids of those it leaves out (logged)."""
    kept, left_out = [], []
    for record in references:
        (kept if protocol.is_scored(record.pairs) else left_out).append(record)
    if left_out:
        logger.warning("protocol %s leaves out %s references without pairs, as RnaBench's benchmark does",
                       protocol.name, _ids_text([r.id for r in left_out]))
    return kept, [r.id for r in left_out]


def _left_out_settings(left_out: Sequence[str]) -> dict:
    return {"left_out_without_pairs": list(left_out)} if left_out else {}


def write_scores_tsv(evaluation: Evaluation, path: str | Path) -> None:
    """Per-sequence table: ``id``, ``length``, then the protocol's metrics, tab-separated.

    Scores of a protocol other than the default ``protrna`` start with a ``# protocol: ...``
    line, so that the file says what its numbers are (the default's layout is unchanged).
    """
    metrics = evaluation.protocol.metrics
    with open(path, "w", encoding="utf-8", newline="") as handle:
        if evaluation.protocol.name != "protrna":
            handle.write(f"# protocol: {evaluation.protocol.description}\n")
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(("id", "length") + metrics)
        for row in evaluation.rows:
            writer.writerow([row["id"], row["length"]] + [f"{row[name]:.6f}" for name in metrics])


def write_summary_json(evaluation: Evaluation, path: str | Path) -> None:
    """The summary of :meth:`Evaluation.summary` as indented JSON."""
    Path(path).write_text(json.dumps(evaluation.summary(), indent=2) + "\n", encoding="utf-8")


def format_table(evaluations: Sequence[Evaluation], digits: int = 4) -> str:
    """Means of several predictors side by side, one line each, columns the protocol's metrics,
    and a last line naming the protocol. All evaluations must share one protocol."""
    protocol = evaluations[0].protocol
    if any(evaluation.protocol.name != protocol.name for evaluation in evaluations):
        raise ValueError("format_table: the evaluations were scored with different protocols")
    header = ["predictor", "n", *protocol.metrics]
    lines = [header]
    for evaluation in evaluations:
        means = evaluation.means
        values = [f"{means[name]:.{digits}f}" for name in protocol.metrics]
        lines.append([evaluation.predictor, str(evaluation.n), *values])
    widths = [max(len(line[k]) for line in lines) for k in range(len(header))]
    text = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines
    ]
    text.append(protocol.footnote)
    return "\n".join(text)


# --- the model-driven evaluation and the command line -----------------------------------------

# First line of a ``.partial`` TSV: what its rows were scored with, so that a rerun with another
# threshold, model or reference starts over instead of mixing in stale rows.
_SETTINGS_LINE = "# settings: "


def _rows_journal(path: Path) -> LineJournal:
    return LineJournal(path, lines=1, header_lines=2)  # the settings line, then the TSV header


def _read_rows(path: Path, settings: Mapping, metrics: Sequence[str] = METRICS) -> dict[str, dict]:
    """Per-sequence rows of an interrupted run (``.partial`` TSV); a torn last line is cut off.

    Raises :class:`~protrna.runtime.resume.OtherRunError` if the rows were scored with other
    ``settings``.
    """
    rows: dict[str, dict] = {}

    def parsed(lines: list[str]) -> bool:
        fields = lines[0].split("\t")
        if len(fields) != 2 + len(metrics):
            return False
        try:
            rows[fields[0]] = {"id": fields[0], "length": int(fields[1]),
                               **{name: float(v) for name, v in zip(metrics, fields[2:])}}
        except ValueError:
            return False
        return True

    journal = _rows_journal(path)
    if not journal.exists():
        return rows
    first = path.open(encoding="utf-8").readline()
    try:
        previous = json.loads(first[len(_SETTINGS_LINE):]) if first.startswith(_SETTINGS_LINE) else None
    except json.JSONDecodeError:
        previous = None
    if not isinstance(previous, dict):
        logger.warning("%s: no settings line (an older or foreign file); starting over", path)
        return rows
    check_same_run(path, previous, settings, finished=False)
    # Keys only in the file count too: a setting this run does not have is another setting.
    check_same_run(path, settings, previous, finished=False)
    header, _ = journal.read(parsed)
    if header[1:] != ["\t".join(("id", "length", *metrics))]:
        rows.clear()
    return rows


def _start_partial(path: Path, settings: Mapping, rows: Iterable[dict], metrics: Sequence[str] = METRICS):
    """Write the settings line, the header and ``rows`` to ``path`` through a temporary file (a
    kill mid-way leaves the old file whole); returns the journal to append to."""
    journal = _rows_journal(path)
    journal.start([_SETTINGS_LINE + json.dumps(dict(settings)), "\t".join(("id", "length", *metrics))],
                  (["\t".join([row["id"], str(row["length"])] + [repr(row[m]) for m in metrics])] for row in rows))
    return journal


def evaluate_predictor(
    references: Sequence[StructureRecord],
    predictor,
    *,
    threshold: float | None = None,
    name: str = "ProtRNA",
    resume_from: str | Path | None = None,
    progress: bool = True,
    settings: Mapping | None = None,
    protocol: str | Protocol = "protrna",
) -> Evaluation:
    """Score a :class:`~protrna.fold.StructurePredictor` as the original's test scripts do.

    Each reference sequence is predicted, ``probabilities > threshold`` (the head's threshold by
    default) is scored as is against the reference pairs, with no one-partner, canonical or loop
    filter, under ``protocol``: ``"protrna"`` (``test_downstream_ss.py``) or ``"rnabench"``
    (``test_downstream_ss_rnabench.py``: the pairs ``i < j`` of that matrix, scored as RnaBench
    0.1.2 does; references without pairs are left out, as its benchmark does, and not predicted). With ``resume_from`` (a ``.tsv`` path), rows are appended to ``<path>.partial`` as
    they are computed and a rerun skips the sequences already there; a rerun with another
    threshold or other ``settings`` (``limit`` aside) raises ``ValueError`` instead of mixing rows.
    """
    from tqdm.auto import tqdm

    from .structure import decode_matrix

    threshold = predictor.head.config.threshold if threshold is None else threshold
    protocol = get_protocol(protocol)
    metrics, scorer = protocol.metrics, _scorer(protocol)
    references, left_out = _scored_references(references, protocol)
    if not references:
        raise ValueError(f"{name}: no reference to score (protocol {protocol.name} needs references with pairs)")
    by_id = {record.id: record for record in references}
    rows: dict[str, dict] = {}
    journal = None
    if resume_from is not None:
        partial = Path(str(resume_from) + ".partial")
        # What the rows depend on; --limit only chooses which rows there are.
        key = {"threshold": threshold, "protocol": protocol.name,
               **{k: v for k, v in (settings or {}).items() if k != "limit"}}
        key = json.loads(json.dumps(key, default=str))
        rows = {k: v for k, v in _read_rows(partial, key, metrics).items() if k in by_id}
        # Rewritten whole (only the rows of this run's references), through a rename.
        make_parent(partial)
        journal = _start_partial(partial, key, rows.values(), metrics)
        if rows:
            logger.info("resuming: %d of %d sequences already scored", len(rows), len(references))
    # Every reference is in the batch plan, scored ones skipped: a resumed run's rows are those
    # of an uninterrupted one.
    scored = [position for position, r in enumerate(references) if r.id in rows]
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(journal.appending()) if journal is not None else None
        bar = stack.enter_context(tqdm(total=len(references), initial=len(rows), unit="seq", desc="evaluate",
                                       disable=not progress, dynamic_ncols=True))
        for result in predictor.predict([(r.id, r.sequence) for r in references], skip=scored):
            reference = by_id[result.id]
            scores = scorer(decode_matrix(result.probabilities, threshold), reference.pairs)
            rows[result.id] = {"id": result.id, "length": len(reference), **scores}
            if sink is not None:
                sink.append(["\t".join([result.id, str(len(reference))] + [repr(scores[m]) for m in metrics])])
            bar.update(1)
    all_settings = {"protocol": protocol.description, "threshold": threshold,
                    **_left_out_settings(left_out), **(settings or {})}
    return Evaluation(name, [rows[r.id] for r in references], settings=all_settings, protocol=protocol)


def sweep_threshold(
    valid: Sequence[StructureRecord],
    predictor,
    *,
    grid: Sequence[float] | None = None,
    protocol: str | Protocol = "protrna",
    valid_name: str = "valid",
    progress: bool = True,
) -> dict:
    """Choose the head's threshold on ``valid`` as the original's validation step does.

    Every scored record of ``valid`` is predicted once, and the threshold of ``grid`` (default
    0.10, 0.11, ..., 0.40, the original's) with the highest mean per-sequence F1 of ``protocol``
    is taken (:func:`protrna.train.ss.select_threshold`, as in ``protrna train-ss``; probability
    maps are used one at a time). Returns :func:`protrna.metrics.sweep.sweep_summary`: the curve,
    the choice, the protocol. (The original's script meant the same sweep, but its loop scores
    the fixed default threshold at every grid value and then keeps the first, 0.10.)
    """
    import itertools

    from tqdm.auto import tqdm

    from .metrics.sweep import sweep_summary
    from .train.ss import DEFAULT_GRID, select_threshold, threshold_grid

    protocol = get_protocol(protocol)
    grid = list(grid) if grid is not None else threshold_grid(*DEFAULT_GRID)
    scored, left_out = _scored_references(valid, protocol)
    if not scored:
        raise ValueError(f"{valid_name}: no record to choose a threshold on (protocol {protocol.name})")
    by_id = {record.id: record for record in scored}
    with tqdm(total=len(scored), unit="seq", desc="sweep", disable=not progress, dynamic_ncols=True) as bar:
        def maps():
            for result in predictor.predict([(r.id, r.sequence) for r in scored]):
                bar.update(1)
                yield result.probabilities, by_id[result.id].pairs

        first, second = itertools.tee(maps())
        threshold, mean = select_threshold((p for p, _ in first), (r for _, r in second), grid, protocol)
    summary = sweep_summary(grid, mean, threshold, protocol, valid=valid_name, n=len(scored))
    if left_out:
        summary["left_out_without_pairs"] = left_out
    return summary


def _sweep(args, predictor, head_name: str) -> dict:
    """``--sweep``: choose the threshold on VALID, write the curve and a copy of the head with it."""
    from .heads.ss import RotaFormer
    from .metrics.sweep import check_head_output, save_head_with_threshold, write_sweep
    from .pretrained import load_pretrained_as, source_name
    from .train.ss import threshold_grid
    from .weights.registry import cache_root

    head_dir = args.sweep_output / "head"
    protected = [cache_root()] + [p for p in (source_name(head_name),) if Path(p).exists()]
    check_head_output(head_dir, protected)
    valid = read_reference(args.sweep)
    grid = threshold_grid(*args.threshold_grid) if args.threshold_grid else None
    summary = sweep_threshold(valid, predictor, grid=grid, protocol=args.protocol, valid_name=str(args.sweep),
                              progress=not args.quiet)
    summary["head"] = getattr(predictor.head, "source", head_name)
    json_path, png_path = write_sweep(summary, args.sweep_output)
    # A fresh copy of the head as stored (the predictor's may run in another dtype).
    head = load_pretrained_as(head_name, RotaFormer, "a structure head")
    save_head_with_threshold(head, summary["threshold"], head_dir, summary)
    print(f"threshold {summary['threshold']:g} chosen on {args.sweep} (mean {summary['metric']} "
          f"{summary['best_mean_f1']:.4f}, n = {summary['n']}, protocol {summary['protocol']}); curve: {json_path}, "
          f"{png_path}; head with this threshold: {head_dir}")
    return summary


def add_parser(subparsers) -> None:
    import argparse

    parser = subparsers.add_parser(
        "evaluate",
        help="score secondary structures against a reference set (the paper's TS0 test)",
        description="Score ProtRNA (language model + structure head) or any predictor's structures "
        "against a reference set, with the original's protocol (--protocol protrna: strict and shifted F1, "
        "MCC, precision, recall, accuracy) or RnaBench 0.1.2's (--protocol rnabench), as means over sequences.",
        epilog="examples: protrna evaluate --reference TS0.dbn --per-sequence ts0.tsv --summary ts0.json\n"
        "          protrna evaluate --reference TS0.dbn --predictions mine.dbn --baseline rnafold\n"
        "          protrna evaluate --reference TS0.dbn bpRNA-new.dbn --baseline rnafold eternafold --report out/\n"
        "          protrna evaluate --protocol rnabench --reference TS0.dbn --sweep VL0.dbn --sweep-output runs/sweep",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--reference", required=True, type=Path, nargs="+",
                        help="3-line .dbn, PDB .tsv, .bpseq/.ct file or a folder of them (several with --report)")
    parser.add_argument("--protocol", choices=["protrna", "rnabench"], default="protrna",
                        help="protrna: the original test_downstream_ss.py (default); rnabench: RnaBench 0.1.2's "
                        "folding benchmark, as the original's test_downstream_ss_rnabench.py (references "
                        "without pairs left out)")
    scored = parser.add_argument_group("scoring given structures (instead of running the model)")
    scored.add_argument("--predictions", nargs="+",
                        help="structures to score: 3-line .dbn (protrna fold, RNAfold, MXfold2 ...; energies "
                        "after the structure are ignored), a .bpseq/.ct file or a folder of them (with --report: "
                        "several, each PATH or NAME=PATH, scored beside the model and the baselines)")
    scored.add_argument("--on-missing", choices=["error", "skip", "empty"], default="error",
                        help="a reference id without prediction: stop (default), leave it out, or score it as "
                        "no pairs")
    scored.add_argument("--on-sequence-mismatch", choices=["error", "warn"], default="error",
                        help="a prediction whose sequence differs from the reference's: stop (default) or "
                        "score it with a warning")
    model = parser.add_argument_group("running ProtRNA (without --predictions)")
    add_options(model, "model", "head")
    model.add_argument("--threshold", type=float, default=None,
                       help="pair probability cut-off (default: the head's, 0.25 for the official head)")
    add_options(model, "dtype", "device", "max-tokens")
    model.add_argument("--sweep", type=Path, default=None, metavar="VALID",
                       help="choose the threshold on this validation set first (best mean F1 of --protocol "
                       "over --threshold-grid), then evaluate with it")
    model.add_argument("--sweep-output", type=Path, default=None, metavar="DIR",
                       help="with --sweep: DIR/threshold_sweep.json and .png (the curve) and DIR/head, a copy of "
                       "the head with the chosen threshold (for --head); the cached head is never changed")
    model.add_argument("--threshold-grid", type=float, nargs=3, default=None, metavar=("START", "STOP", "STEP"),
                       help="with --sweep: thresholds tried (default 0.10 0.40 0.01, the original's)")
    parser.add_argument("--baseline", nargs="+", default=[], choices=list(BASELINES),
                        help="also score classical folders on the same sequences: rnafold, linearfold-v, eternafold "
                        "(pip install 'protrna[baselines]'; see protrna.baselines)")
    report = parser.add_argument_group("one report of several sets and predictors (protrna.report)")
    report.add_argument("--report", type=Path, default=None,
                        help="folder for report.md, report.json, f1_by_length.png and per-sequence tables of every "
                        "predictor on every --reference; a rerun resumes")
    report.add_argument("--no-model", action="store_true",
                        help="with --report: leave ProtRNA out, score only --baseline and --predictions")
    parser.add_argument("--limit", type=int, default=None, help="only the first N reference records")
    parser.add_argument("--per-sequence", type=Path,
                        help="TSV of per-sequence scores (with a model: also where an interrupted run resumes)")
    parser.add_argument("--summary", type=Path, help="JSON with the means, n and settings")
    add_options(parser, "quiet")
    parser.set_defaults(func=_run)


def predictor_name(path: Path) -> str:
    """``mine`` for ``mine.dbn``, ``mine.dbn.gz`` or a folder ``mine/`` (``.`` included)."""
    name = path.resolve().name
    if path.is_dir():
        return name
    name = name[:-3] if name.endswith(".gz") else name
    return Path(name).stem


def _check_options(args) -> None:
    """Options that do nothing in the chosen mode are errors, not silently ignored."""
    if args.predictions is not None:
        ignored = [f"--{name.replace('_', '-')}" for name in ("model", "head", "threshold", "dtype", "device",
                                                              "max_tokens", "sweep", "sweep_output", "threshold_grid")
                   if getattr(args, name) is not None]
        if ignored:
            raise ValueError(f"{', '.join(ignored)} apply to running the model; --predictions are scored as given")
    else:
        ignored = [flag for flag, value, default in (("--on-missing", args.on_missing, "error"),
                                                     ("--on-sequence-mismatch", args.on_sequence_mismatch, "error"))
                   if value != default]
        if ignored:
            raise ValueError(f"{', '.join(ignored)} apply to --predictions; the model predicts every reference")
    check_threshold(args.threshold)
    if args.sweep is None:
        ignored = [flag for flag, value in (("--sweep-output", args.sweep_output),
                                            ("--threshold-grid", args.threshold_grid)) if value is not None]
        if ignored:
            raise ValueError(f"{', '.join(ignored)} apply to --sweep")
    elif args.threshold is not None:
        raise ValueError("--threshold and --sweep exclude each other: --sweep chooses the threshold")
    elif args.sweep_output is None:
        raise ValueError("--sweep needs --sweep-output DIR: where the curve and the head with the chosen threshold go")
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be at least 1")


def _run(args) -> int:
    if args.report is not None:  # several sets and predictors: protrna.report
        if args.protocol != "protrna" or args.sweep is not None:
            raise ValueError("--report scores with the original protocol at the head's threshold: "
                             "--protocol rnabench and --sweep work without --report")
        from .report import run_from_args

        return run_from_args(args)
    if len(args.reference) > 1 or len(args.predictions or []) > 1 or args.no_model:
        raise ValueError("several --reference or --predictions files, and --no-model, need --report DIR")
    args.reference = args.reference[0]
    args.predictions = Path(args.predictions[0]) if args.predictions else None
    _check_options(args)
    from .baselines import require_baseline

    for key in args.baseline:
        require_baseline(key)  # before any work, not after the model has run
    # Checked now, made when written: a refused run leaves no folder behind.
    for flag, output in (("--per-sequence", args.per_sequence), ("--summary", args.summary)):
        if output is not None:
            check_output_file(output, flag, example="scores.tsv" if flag == "--per-sequence" else "summary.json")
    every_reference = read_reference(args.reference)
    references = every_reference[: args.limit] if args.limit is not None else every_reference
    check_nucleotides(references)  # as fold would, with or without the model, before any work
    # The rows depend on the references' letters and pairs, not only on the file's name.
    reference_digest = records_digest((r.id, f"{r.sequence} {r.pairs.pairs.tolist()}") for r in every_reference)
    common = {"reference": str(args.reference), "reference_sha256": reference_digest, "limit": args.limit}
    if args.predictions is not None:
        predictions = read_predictions(args.predictions)
        if len(references) < len(every_reference):  # predictions of the records past --limit are expected
            left_out = {record.id for record in every_reference[len(references):]}
            predictions = [record for record in predictions if record.id not in left_out]
        main = score_predictions(
            references, predictions, predictor=predictor_name(args.predictions),
            on_missing=args.on_missing, on_sequence_mismatch=args.on_sequence_mismatch,
            settings={**common, "predictions": str(args.predictions)}, protocol=args.protocol,
        )
    else:

        model, head = args.model or DEFAULT_MODEL, args.head or DEFAULT_HEAD
        dtype = args.dtype or "float32"
        predictor = load_predictor(model, head, dtype=dtype, device=args.device, max_tokens=args.max_tokens)
        threshold, swept = args.threshold, {}
        if args.sweep is not None:
            sweep = _sweep(args, predictor, head)
            threshold = sweep["threshold"]
            swept = {"threshold_sweep": {"valid": str(args.sweep), "grid": list(sweep["curve"]),
                                         "output": str(args.sweep_output)}}
        main = evaluate_predictor(
            references, predictor, threshold=threshold, progress=not args.quiet,
            resume_from=args.per_sequence, protocol=args.protocol,
            # Where the weights came from (paths made absolute): a resume from another folder matches.
            settings={**common, "model": getattr(predictor.lm, "source", model),
                      "head": getattr(predictor.head, "source", head), "dtype": dtype, **swept},
        )
    evaluations = [main]
    for key in dict.fromkeys(args.baseline):
        from .baselines import baseline_records

        evaluations.append(score_predictions(references, list(baseline_records(key, references)),
                                             predictor=BASELINES[key].name,
                                             settings={**common, "baseline": BASELINES[key].method},
                                             protocol=args.protocol))
    print(format_table(evaluations))
    if args.per_sequence is not None:
        write_scores_tsv(main, make_parent(args.per_sequence))
        Path(str(args.per_sequence) + ".partial").unlink(missing_ok=True)
        for extra in evaluations[1:]:
            write_scores_tsv(extra, args.per_sequence.with_suffix(f".{extra.predictor.lower()}.tsv"))
    if args.summary is not None:
        summary = main.summary()
        summary["baselines"] = {e.predictor: e.summary() for e in evaluations[1:]}
        make_parent(args.summary).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0
