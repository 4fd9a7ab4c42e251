"""``protrna fold``: secondary structures from the language model and the RotaFormer head.

:class:`protrna.runtime.StructurePredictor` turns RNAs of any length into pair-probability maps: the language
model runs in 510-nt windows where needed (as in ``protrna embed``) and the head sees the whole
RNA at once up to ``--max-span`` nt (default 500, the longest RNAs the released head learnt from);
longer RNAs go through the head in overlapping windows of that length, pairs at least that far
apart are not predicted, and their probabilities are a sparse pair list
(:mod:`protrna.runtime.long_rnas`). :func:`fold_fasta` writes, into an output directory::

    predictions.dbn      3-line records (>id, sequence, dot-bracket), input order
    confidence.tsv       per record: predicted pairs, expected precision / recall / F1 and mean
                         pairing probability from the pair probabilities (protrna.confidence)
    <id>.bpseq, <id>.ct  with --format bpseq / ct (ids made file-safe)
    <id>.npy             with --probabilities: the (L, L) float32 pair-probability map
    <id>.npz             with --probabilities, for RNAs longer than --max-span: the pairs above
                         --pair-floor (protrna.sparse_pairs; --dense-probabilities: .npy instead)
    <id>.png             with --plot: probability map with the predicted pairs, and an arc diagram
    fold_settings.json   model, head, threshold and decoding options of the run

Structure files need one partner per base, so pairs above the threshold are resolved greedily by
probability (:func:`protrna.structure.resolve_conflicts`); ``protrna evaluate --model`` scores the
raw thresholded map instead, as the original does. An interrupted run resumes from
``predictions.dbn.partial``: records already there are not predicted again.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm.auto import tqdm

from .data.fasta import input_path
from .data.records import InvalidRecordError, valid_records
from .heads.ss import RotaFormer
from .model import ProtRNA
from .options import add_options
from .runtime import (
    DEFAULT_HEAD,
    DEFAULT_MAX_SPAN,
    DEFAULT_MODEL,
    DEFAULT_OVERLAP,
    DEFAULT_PAIR_FLOOR,
    StructurePredictor,
    check_max_span,
    load_predictor,
)
from .sparse_pairs import SparsePairProbabilities
from .runtime.paths import check_input_file, check_output_folder, make_folder, safe_file_names
from .runtime.resume import (
    LineJournal,
    check_same_run,
    partial_path,
    read_settings_file,
    run_settings,
    write_settings_file,
)
from .structure import (
    CONFLICT_METHODS,
    StructureRecord,
    check_threshold,
    resolve_conflicts,
    write_bpseq,
    write_ct,
)

log = logging.getLogger(__name__)

FORMATS = ("dbn", "bpseq", "ct")


def _complete_record(lines: list[str]) -> bool:
    header, sequence, structure = lines
    return header.startswith(">") and bool(sequence) and len(sequence) == len(structure)


def fold_fasta(
    fasta: str | Path,
    output_dir: str | Path,
    model: ProtRNA | str = DEFAULT_MODEL,
    head: RotaFormer | str = DEFAULT_HEAD,
    *,
    formats: Iterable[str] = ("dbn",),
    threshold: float | None = None,
    probabilities: bool = False,
    plot: bool = False,
    canonical_only: bool = False,
    min_hairpin: int = 0,
    resolve: str = "greedy",
    dtype: str | None = None,
    device: str | None = None,
    max_tokens: int | None = None,
    window_overlap: int = DEFAULT_OVERLAP,
    max_span: int | None = None,
    pair_floor: float = DEFAULT_PAIR_FLOOR,
    dense_probabilities: bool = False,
    skip_invalid: bool = False,
    unique_ids: bool = False,
    progress: bool = True,
    predictor: StructurePredictor | None = None,
) -> Path:
    """Predict the structure of every record of ``fasta`` into ``output_dir`` (see module doc).

    ``threshold`` defaults to the head's own (0.25 for the official head); ``resolve``,
    ``canonical_only`` and ``min_hairpin`` are those of :func:`protrna.structure.resolve_conflicts`
    (``resolve`` is its ``method``). ``max_span``: RNAs longer than this are folded in windows
    (None: :data:`~protrna.runtime.defaults.DEFAULT_MAX_SPAN`, or a given ``predictor``'s own; 0:
    every RNA whole); their pair lists keep the pairs above ``pair_floor``, written as ``.npz``
    unless ``dense_probabilities`` (which also switches ``probabilities`` on). Returns the path of
    ``predictions.dbn``.
    """
    fasta, output_dir = Path(fasta), Path(output_dir)
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"--format takes {', '.join(FORMATS)}; got {unknown}")
    if resolve not in CONFLICT_METHODS:
        raise ValueError(f"--resolve takes {', '.join(CONFLICT_METHODS)}; got {resolve!r}")
    # Options are checked before anything is written: a bad one must not leave an output
    # directory whose settings then refuse the corrected rerun.
    check_threshold(threshold)
    if min_hairpin < 0:
        raise ValueError(f"--min-hairpin must be 0 or more, not {min_hairpin}")
    if max_span is not None:
        max_span = check_max_span(max_span)
        if predictor is not None and predictor.max_span != max_span:
            raise ValueError(f"max_span={max_span}, but the predictor given folds with max_span={predictor.max_span}")
    if not 0.0 <= pair_floor < 1.0:
        raise ValueError(f"--pair-floor is a pair probability in [0, 1), not {pair_floor}")
    probabilities = probabilities or dense_probabilities
    check_input_file(fasta)
    check_output_folder(output_dir)
    valid = [(record.id, record.sequence) for record in valid_records(fasta, skip_invalid, unique_ids=unique_ids)]
    if not valid:
        raise InvalidRecordError(f"{fasta}: no records to fold")
    sequences = dict(valid)
    # Per-record file names depend on every id (clashes are numbered in input order), so a run
    # resumes only on the same records: another input could give a done record's name to a new one.

    predictor = predictor or load_predictor(model, head, dtype=dtype, device=device, max_tokens=max_tokens,
                                            window_overlap=window_overlap,
                                            max_span=DEFAULT_MAX_SPAN if max_span is None else max_span)
    threshold = predictor.head.config.threshold if threshold is None else threshold
    settings = run_settings({
        "model": str(getattr(predictor.lm, "source", "in-memory model")),
        "head": str(getattr(predictor.head, "source", "in-memory head")),
        "threshold": threshold,
        "canonical_only": canonical_only,
        "min_hairpin": min_hairpin,
        "resolve": resolve,
        "dtype": str(predictor.lm.dtype).removeprefix("torch."),
        "window_overlap": window_overlap,
        "max_span": predictor.max_span,
        "pair_floor": pair_floor,
        "dense_probabilities": dense_probabilities,
        "formats": sorted(set(formats) - {"dbn"}),  # predictions.dbn is always written
        "probabilities": probabilities,
        "input_records": len(valid),
        "plot": plot,
    }, valid)
    make_folder(output_dir)
    final = output_dir / "predictions.dbn"
    journal = LineJournal(partial_path(final), lines=3)
    settings_path = output_dir / "fold_settings.json"
    if final.exists() or journal.exists():
        check_same_run(output_dir, read_settings_file(settings_path) or {}, settings,
                       finished=not journal.exists())
    write_settings_file(settings_path, settings)

    names = dict(zip([i for i, _ in valid], safe_file_names([i for i, _ in valid])))
    done = {header[1:]: (sequence, structure)
            for header, sequence, structure in journal.read(_complete_record)[1]}
    if final.exists() and not journal.exists():
        done = {r.id: (r.sequence, r.dot_bracket) for r in _read_dbn_records(final)}
    stale = [i for i in done if i not in names or done[i][0] != sequences[i]]
    if stale:
        raise FileExistsError(f"{output_dir} has predictions for other input (e.g. {stale[0]!r}); "
                              "choose another output directory")
    # Finished records still count in the batch plan, so the rest get a full run's numbers.
    finished = [position for position, (i, _) in enumerate(valid) if i in done]
    if done:
        log.info("resuming: %d of %d records already folded", len(done), len(valid))

    from .confidence import ConfidenceTable

    confidence = ConfidenceTable(output_dir)
    with confidence, journal.appending() as sink, tqdm(
        total=len(valid), initial=len(done), unit="seq", desc="fold", disable=not progress, dynamic_ncols=True
    ) as bar:
        # Decoding needs every pair above the threshold, the files those above the floor.
        for result in predictor.predict(valid, skip=finished, pair_floor=min(pair_floor, threshold)):
            if result.sparse:
                _log_windows(result.id, result.probabilities, predictor)
            pairs = resolve_conflicts(result.probabilities, threshold, sequence=result.sequence,
                                      canonical_only=canonical_only, min_hairpin=min_hairpin, method=resolve)
            record = StructureRecord(result.id, result.sequence, pairs)
            confidence.add(record.id, result.probabilities, pairs)  # before the record is marked done
            _write_record_files(record, result.probabilities, output_dir / names[result.id], formats,
                                probabilities, plot, threshold, pair_floor, dense_probabilities)
            sink.append([f">{record.id}", record.sequence, record.dot_bracket])
            done[record.id] = (record.sequence, record.dot_bracket)
            bar.update(1)

    ordered = "".join(f">{i}\n{done[i][0]}\n{done[i][1]}\n" for i, _ in valid)
    journal.finish(final, ordered)
    confidence.finish([i for i, _ in valid])
    log.info("wrote %s (%d structures)", final, len(valid))
    return final


def _read_dbn_records(path: Path):
    from .structure import read_dbn

    return list(read_dbn(path))


def _log_windows(record_id: str, pairs: SparsePairProbabilities, predictor: StructurePredictor) -> None:
    # What RNAplfold's -L says by its option: which pairs the output cannot hold.
    log.info("%s: %d nt, longer than --max-span %d: folded in %d windows of %d nt; pairs %d or more nt apart "
             "are not predicted, pairs up to %d apart all are", record_id, pairs.length, pairs.max_span,
             len(predictor.windows(pairs.length)), pairs.max_span, pairs.max_span, pairs.complete_span)


def _write_record_files(record: StructureRecord, probabilities: np.ndarray | SparsePairProbabilities, stem: Path,
                        formats, save_probabilities: bool, plot: bool, threshold: float, pair_floor: float,
                        dense_probabilities: bool) -> None:
    sparse = isinstance(probabilities, SparsePairProbabilities)
    if "bpseq" in formats:
        write_bpseq(record, stem.with_name(stem.name + ".bpseq"))
    if "ct" in formats:
        write_ct(record, stem.with_name(stem.name + ".ct"))
    if save_probabilities and sparse and not dense_probabilities:
        probabilities.above(max(pair_floor, probabilities.floor)).save(stem.with_name(stem.name + ".npz"))
    elif save_probabilities:
        np.save(stem.with_name(stem.name + ".npy"), probabilities.to_dense() if sparse else probabilities)
    if plot:
        from .plot import plot_structure

        # A long RNA's map is not drawn (it would be L x L); its pairs and pairing track are.
        plot_structure(stem.with_name(stem.name + ".png"), probabilities=None if sparse else probabilities,
                       pred=record.pairs, sequence=record.sequence, title=record.id, threshold=threshold,
                       pairing=probabilities.pairing if sparse else None)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fold",
        help="predict secondary structures of a FASTA file",
        description=__doc__.split("\n\n")[0].replace("``", ""),
        epilog="example: protrna fold rnas.fa --output-dir folds --format bpseq ct --plot",
    )
    parser.add_argument("input", type=Path, help="FASTA file (.gz ok; 3-line .dbn works too; - for stdin)")
    parser.add_argument("--output-dir", "-o", type=Path, required=True,
                        help="folder for predictions.dbn and the per-record files (created if missing)")
    add_options(parser, "model", "head")
    parser.add_argument("--format", nargs="+", default=["dbn"], choices=FORMATS,
                        help="per-record files besides predictions.dbn (default: dbn only)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="pair probability cut-off (default: the head's, 0.25 for the official head)")
    parser.add_argument("--canonical-only", action="store_true", help="keep only AU, GC and GU pairs")
    parser.add_argument("--min-hairpin", type=int, default=0,
                        help="minimum hairpin loop length, e.g. 3 (default: 0, no filter)")
    parser.add_argument("--resolve", choices=CONFLICT_METHODS, default="greedy",
                        help="one partner per base: most probable pairs first (greedy, default) or the "
                        "exact maximum-weight matching (matching)")
    parser.add_argument("--probabilities", action="store_true", help="save each pair-probability map as .npy (RNAs longer than --max-span: the pair list, .npz)")
    parser.add_argument("--plot", action="store_true", help="save a PNG per record")
    add_options(parser, "dtype", "device", "max-tokens")
    parser.add_argument("--window-overlap", type=int, default=DEFAULT_OVERLAP,
                        help="overlap of the 510-nt language-model windows covering longer RNAs "
                        "(default: %(default)s)")
    parser.add_argument("--max-span", type=int, default=DEFAULT_MAX_SPAN,
                        help="RNAs up to this length go through the head whole, longer ones in windows of it "
                        "(stride half a window), and pairs this far apart or more are not predicted; 0: every "
                        "RNA whole (default: %(default)s, the longest RNAs the released head was trained on)")
    parser.add_argument("--pair-floor", type=float, default=DEFAULT_PAIR_FLOOR,
                        help="pair probabilities of RNAs longer than --max-span are saved as a list of the "
                        "pairs above this (default: %(default)s)")
    parser.add_argument("--dense-probabilities", action="store_true",
                        help="save every RNA's pair probabilities as an (L, L) .npy, long ones too (L x L x 4 "
                        "bytes each)")
    add_options(parser, "invalid", "unique-ids", "quiet")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    with input_path(args.input) as fasta:  # '-': standard input
        path = fold_fasta(
            fasta, args.output_dir, args.model or DEFAULT_MODEL, args.head or DEFAULT_HEAD, formats=args.format, threshold=args.threshold,
            probabilities=args.probabilities, plot=args.plot, canonical_only=args.canonical_only,
            min_hairpin=args.min_hairpin, resolve=args.resolve, dtype=args.dtype, device=args.device,
            max_tokens=args.max_tokens, window_overlap=args.window_overlap, max_span=args.max_span,
            pair_floor=args.pair_floor, dense_probabilities=args.dense_probabilities, skip_invalid=args.invalid == "skip",
            unique_ids=args.unique_ids,
            progress=not args.quiet,
        )
    print(path)
    return 0
