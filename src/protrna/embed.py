"""``protrna embed``: language-model representations of every RNA in a FASTA file, into HDF5.

Output layout (one file; N records in input order, skipped records left out)::

    /ids                (N,)    utf-8 record ids (h5py gives bytes: ``h5["ids"].asstr()[:]``)
    /lengths            (N,)    nucleotides per record
    /offsets            (N+1,)  record i owns rows offsets[i]:offsets[i+1] of /per_tok/<layer>
    /mean/<layer>       (N, D)  float32, whatever the compute dtype; mean over nucleotides (BOS/EOS excluded, as ESM's extract)
    /per_tok/<layer>    (sum of lengths, D)  one row per nucleotide, records concatenated
    /bos/<layer>        (N, D)  the BOS (<cls>) vector
    /done               (N,)    1 once a record's rows are written (resume bookkeeping)
    attributes: model, dtype (of the computation), layers, include, window, overlap,
                input_sha256 (of the ids and sequences), protrna_version, complete

The run writes ``OUT.partial`` and renames it to ``OUT`` when every record is in, so a file at
the output path is always complete. All datasets are allocated in full before the first batch and
never resized, so a killed run leaves a readable ``OUT.partial`` in which every record marked done
is intact; rerunning the same command resumes there.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import h5py
import numpy as np
from tqdm.auto import tqdm

from .alphabet import MAX_RESIDUES
from .data.fasta import FastaRecord, input_path
from .data.records import InvalidRecordError, checked_records, valid_records
from .digest import records_digest
from .model import ProtRNA
from .options import add_options
from .runtime.paths import check_input_file, check_output_file, make_parent
from .runtime.resume import OtherRunError, check_same_run, commit, partial_path, plain, run_settings
from .runtime.store import allocate_dataset
from .runtime import (
    DEFAULT_MODEL,
    DEFAULT_OVERLAP,
    WindowedEncoder,
    pack_if_owned,
    plan_windows,
    prepare_model,
    token_budget,
)

log = logging.getLogger(__name__)

INCLUDE_CHOICES = ("mean", "per_tok", "bos")
#: Records read, sorted and batched together; bounds memory on very large files.
CHUNK_RECORDS = 20_000


@dataclasses.dataclass(frozen=True)
class RecordIndex:
    """What the first pass learns about the valid records of a FASTA file."""

    ids: list[str]
    lengths: list[int]
    skipped: int
    unique_ids: bool = False  # repeated ids were numbered (see protrna.data.records)

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)])


def scan_records(path: str | Path, skip_invalid: bool = False, unique_ids: bool = False) -> RecordIndex:
    """Validate every record of ``path`` (see :mod:`protrna.data.records`), keeping only ids and
    lengths, so any file size works."""
    ids: list[str] = []
    lengths: list[int] = []
    skipped: list[str] = []
    for record in valid_records(path, skip_invalid, skipped, unique_ids):
        ids.append(record.id)
        lengths.append(len(record.sequence))
    if not ids:
        raise InvalidRecordError(f"{path}: no records to embed")
    return RecordIndex(ids, lengths, len(skipped), unique_ids)


def _records_of(path: Path, index: RecordIndex) -> Iterator[FastaRecord]:
    """The records of ``path`` that :func:`scan_records` kept, in order (skipping quietly)."""
    position = 0
    for record, problem in checked_records(path, index.unique_ids):
        if problem:
            continue
        if position >= len(index.ids) or record.id != index.ids[position]:
            raise InvalidRecordError(f"{path} changed while it was being embedded (at record {record.id!r})")
        position += 1
        yield record


def resolve_layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    """ESM convention: negative layers count from the end (-1 = last); default = last layer.

    >>> resolve_layers([-1, 0, 12], 33)
    [0, 12, 33]
    """
    if not layers:
        return [num_layers]
    resolved = set()
    for layer in layers:
        if not -(num_layers + 1) <= layer <= num_layers:
            raise ValueError(f"layer {layer} does not exist; the model has layers 0..{num_layers} "
                             f"(or -{num_layers + 1}..-1 from the end)")
        resolved.add(layer % (num_layers + 1))
    return sorted(resolved)


class EmbeddingStore:
    """The HDF5 output file, created complete-sized up front so resumption is always safe."""

    def __init__(self, h5: h5py.File):
        self.h5 = h5

    @classmethod
    def open(cls, path: Path, index: RecordIndex, layers: list[int], include: list[str], dim: int,
             settings: dict) -> "EmbeddingStore":
        if path.exists():
            store = cls(_open_h5(path, "r+"))
            store._check_matches(path, index, layers, include, settings)
            return store
        h5 = h5py.File(path, "w")
        string = h5py.string_dtype("utf-8")
        h5.create_dataset("ids", data=np.array(index.ids, dtype=object), dtype=string)
        h5.create_dataset("lengths", data=np.asarray(index.lengths, dtype=np.int64))
        h5.create_dataset("offsets", data=index.offsets)
        rows = {"mean": len(index.ids), "per_tok": int(index.offsets[-1]), "bos": len(index.ids)}
        for kind in include:
            for layer in layers:
                allocate_dataset(h5, f"{kind}/{layer}", (rows[kind], dim))
        allocate_dataset(h5, "done", (len(index.ids),), dtype=np.uint8)
        for key, value in settings.items():
            h5.attrs[key] = value
        h5.attrs["layers"] = np.asarray(layers, dtype=np.int64)
        h5.attrs["include"] = ",".join(include)
        h5.attrs["complete"] = False
        h5.flush()
        return cls(h5)

    def _check_matches(self, path: Path, index: RecordIndex, layers: list[int], include: list[str],
                       settings: dict) -> None:
        h5 = self.h5
        try:
            _require_ours(h5, path)
        except FileExistsError:
            h5.close()
            raise
        wanted = dict(settings, layers=layers, include=",".join(include))
        recorded = {key: plain(h5.attrs.get(key)) for key in wanted}
        same_records = (
            "ids" in h5 and h5["ids"].shape[0] == len(index.ids)
            and list(h5["ids"].asstr()[:]) == index.ids
            and np.array_equal(h5["lengths"][:], index.lengths)
        )
        if not same_records:
            recorded["input_sha256"] = None
        finished = bool(h5.attrs.get("complete"))
        try:
            check_same_run(path, recorded, wanted, finished=finished)
        except OtherRunError:
            h5.close()
            raise

    def pending(self) -> np.ndarray:
        return ~self.h5["done"][:].astype(bool)

    def write(self, index: int, offsets: np.ndarray, encoded, include: list[str]) -> None:
        for layer, values in encoded.per_token.items():
            if "per_tok" in include:
                self.h5[f"per_tok/{layer}"][offsets[index] : offsets[index + 1]] = values.cpu().numpy()
            if "mean" in include:
                self.h5[f"mean/{layer}"][index] = values.mean(0).cpu().numpy()
            if "bos" in include:
                self.h5[f"bos/{layer}"][index] = encoded.bos[layer].cpu().numpy()

    def mark_done(self, indices: Iterable[int]) -> None:
        # Data first, then the flags: a record is marked only once its rows are on disk.
        self.h5.flush()
        done = self.h5["done"]
        for i in sorted(indices):
            done[i] = 1
        self.h5.flush()

    def close(self, complete: bool) -> None:
        self.h5.attrs["complete"] = complete
        self.h5.close()


def _open_h5(path: Path, mode: str) -> h5py.File:
    """``h5py.File``, with errors that say what is wrong with ``path``."""
    try:
        return h5py.File(path, mode)
    except OSError as error:
        if "lock" in str(error).lower():
            raise FileExistsError(f"{path} is open in another process (another embed run writing it?)") from None
        raise FileExistsError(f"{path} exists and is not an HDF5 file from protrna embed ({error}); remove it "
                              "or choose another output") from None


def _require_ours(h5: h5py.File, path: Path) -> None:
    if "ids" not in h5 or "done" not in h5 or "complete" not in h5.attrs:
        raise FileExistsError(f"{path} is not a protrna embedding file (or is damaged); remove it or "
                              "choose another output")


def embed_fasta(
    fasta: str | Path,
    output: str | Path,
    model: ProtRNA | str = DEFAULT_MODEL,
    *,
    layers: Sequence[int] | None = None,
    include: Sequence[str] = ("mean",),
    dtype: str | None = None,
    device: str | None = None,
    max_tokens: int | None = None,
    window_overlap: int = DEFAULT_OVERLAP,
    skip_invalid: bool = False,
    unique_ids: bool = False,
    progress: bool = True,
) -> Path:
    """Embed every record of ``fasta`` into the HDF5 file ``output`` and return its path.

    ``model`` is a :class:`ProtRNA` or anything :func:`protrna.load_pretrained_model` accepts.
    Rerunning with the same arguments resumes an interrupted run; a finished file is left alone.
    """
    fasta, output = Path(fasta), Path(output)
    include = [include] if isinstance(include, str) else list(include)
    unknown = [k for k in include if k not in INCLUDE_CHOICES]
    if unknown or not include:
        raise ValueError(f"--include takes {', '.join(INCLUDE_CHOICES)}; got {include}")
    include = [k for k in INCLUDE_CHOICES if k in include]  # one order, so that reruns compare equal
    plan_windows(MAX_RESIDUES + 1, MAX_RESIDUES, window_overlap)  # checks the overlap, before any work
    check_input_file(fasta)
    check_output_file(output, example="embeddings.h5")
    for existing in (output, partial_path(output)):
        if existing.exists():  # refuse to write over a foreign file before the model is loaded
            with _open_h5(existing, "r") as h5:
                _require_ours(h5, existing)

    index = scan_records(fasta, skip_invalid, unique_ids)
    # Ids and lengths alone would miss a changed nucleotide: a rerun must not reuse stale rows.
    digest = records_digest((record.id, record.sequence) for record in _records_of(fasta, index))
    owned = isinstance(model, (str, Path))
    model = prepare_model(model, dtype, device)
    layers = resolve_layers(layers, model.num_layers)
    max_tokens = token_budget(max_tokens, model.device)
    # A model we loaded is ours to change for good; a caller's model gets its layers back.
    unpack = pack_if_owned(model, owned, max_tokens)
    settings = run_settings({
        "model": getattr(model, "source", "in-memory model"),
        "dtype": str(model.dtype).removeprefix("torch."),
        "window": MAX_RESIDUES,
        "overlap": window_overlap,
        "input_sha256": digest,
    })
    try:  # whatever happens, a caller's model gets its own layers back
        return _embed_into(output, fasta, index, model, layers, include, settings, max_tokens,
                           window_overlap, progress)
    finally:
        if unpack:
            unpack()


def _embed_into(output: Path, fasta: Path, index: RecordIndex, model: ProtRNA, layers: list[int],
                include: list[str], settings: dict, max_tokens: int, window_overlap: int, progress: bool) -> Path:
    """The body of :func:`embed_fasta` once the model is ready."""
    if output.exists():
        with _open_h5(output, "r") as done_file:
            if done_file.attrs.get("complete"):
                EmbeddingStore(done_file)._check_matches(output, index, layers, include, settings)
                log.info("%s is complete already; nothing to do", output)
                return output
    partial = partial_path(output)
    make_parent(output)
    store = EmbeddingStore.open(partial, index, layers, include, model.embed_dim, settings)
    complete = False
    try:
        pending = store.pending()
        if pending.sum() < len(pending):
            log.info("resuming %s: %d of %d records already embedded", partial, (~pending).sum(), len(pending))
        offsets = index.offsets
        encoder = WindowedEncoder(model, layers, max_tokens=max_tokens, overlap=window_overlap)
        bar = tqdm(total=len(pending), initial=int((~pending).sum()), unit="seq", disable=not progress,
                   desc="embed", dynamic_ncols=True)
        with bar:
            for chunk_start, chunk in _chunks(_records_of(fasta, index), pending):
                finished = []
                done = [i for i in range(len(chunk)) if not pending[chunk_start + i]]
                for encoded in encoder.encode(chunk, first_index=chunk_start, skip=done):
                    store.write(encoded.index, offsets, encoded, include)
                    finished.append(encoded.index)
                    # Flag records in small groups so a kill loses little work.
                    if len(finished) >= 64:
                        store.mark_done(finished)
                        bar.update(len(finished))
                        finished = []
                store.mark_done(finished)
                bar.update(len(finished))
        complete = bool(store.h5["done"][:].all())
    finally:
        store.close(complete)
    if complete:
        commit(partial, output)
        log.info("wrote %s (%d records%s)", output, len(index.ids),
                 f", {index.skipped} invalid skipped" if index.skipped else "")
    return output


def _chunks(records: Iterator[FastaRecord], pending: np.ndarray):
    """Consecutive chunks of ``(id, sequence)`` with the file index of their first entry; chunks
    with nothing pending are left out. Chunks are cut by position alone, never by what is done, so
    a resumed run plans the very batches of an uninterrupted one."""
    chunk: list[tuple[str, str]] = []
    start = 0
    for position, record in enumerate(records):
        chunk.append((record.id, record.sequence))
        if len(chunk) == CHUNK_RECORDS:
            if pending[start : start + len(chunk)].any():
                yield start, chunk
            start, chunk = position + 1, []
    if chunk and pending[start : start + len(chunk)].any():
        yield start, chunk


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="language-model embeddings of a FASTA file, into HDF5",
        description=__doc__.split("\n\n")[0].replace("``", ""),
        epilog="example: protrna embed rnas.fa --output rnas.h5 --include mean per_tok --layers -1 12",
    )
    parser.add_argument("input", type=Path, help="FASTA file (.gz ok; 3-line .dbn works too; - for stdin)")
    parser.add_argument("--output", "-o", type=Path, required=True, help="HDF5 file to write")
    add_options(parser, "model")
    parser.add_argument("--layers", type=int, nargs="+", default=None,
                        help="layers to keep; negative counts from the end (default: last)")
    parser.add_argument("--include", nargs="+", default=["mean"], choices=INCLUDE_CHOICES,
                        help="what to store per layer (default: mean)")
    add_options(parser, "dtype", "device", "max-tokens")
    parser.add_argument("--window-overlap", type=int, default=DEFAULT_OVERLAP,
                        help="overlap of the 510-nt windows covering longer RNAs (default: %(default)s)")
    add_options(parser, "invalid", "unique-ids", "quiet")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    with input_path(args.input) as fasta:  # '-': standard input
        path = embed_fasta(
            fasta, args.output, args.model or DEFAULT_MODEL, layers=args.layers, include=args.include,
            dtype=args.dtype, device=args.device, max_tokens=args.max_tokens,
            window_overlap=args.window_overlap, skip_invalid=args.invalid == "skip", unique_ids=args.unique_ids,
            progress=not args.quiet,
        )
    print(path)
    return 0
