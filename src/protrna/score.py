"""``protrna score``: zero-shot scores from the language model: pseudo-perplexity, variant effects
and saturation tables.

Definitions (natural logarithms; log-probabilities are ``log_softmax`` over the model's whole
38-token vocabulary, as in the ESM literature):

* **Pseudo-log-likelihood** of an RNA: ``PLL = sum_i log p(x_i | x with position i masked)``,
  one forward pass per position. The sum runs over the nucleotides A, C, G, U only: BOS and EOS
  are never scored, and an ambiguous letter (N, R, ...; the model's ``x``) stays in the context
  but is not scored. ``scored`` is the number of positions in the sum, and the
  **pseudo-perplexity** is ``PPPL = exp(-PLL / scored)``: 4 for a model that knows nothing beyond
  "one of four nucleotides", 1 for a perfect one.
* **Variant effects** of a variant (one or more substitutions, ``G12A`` or ``G12A:C40U``,
  1-based; higher is more likely under the model):

  - ``masked-marginal`` (default): the mutated positions masked together in the wild type, one
    pass; the sum over them of ``log p(mutant letter) - log p(wild-type letter)``;
  - ``wt-marginal``: the same sum read from one unmasked pass over the wild type (per RNA, shared
    by all its variants);
  - ``pseudo-likelihood``: ``PLL(mutant) - PLL(wild type)`` (one pass per position per variant:
    the slowest and the only one that sees the mutant's context).

* **Saturation**: every single substitution of an RNA, an ``L x 4`` table with columns A C G U;
  entry ``[i, b]`` is the masked-marginal score of substituting ``b`` at position ``i + 1``, so
  the wild-type letter's entry is 0 (rows of ambiguous letters are NaN). It comes from the same
  passes as the PLL, which the saturation file holds too.

**Long RNAs.** The model sees at most 510 nt at once; longer RNAs are covered by the overlapping
windows of ``protrna embed`` (:func:`protrna.runtime.plan_windows`: 510 nt, overlap 128 by
default), each with its own BOS and EOS. A masked pass runs on one window that contains the masked
positions: of the planned windows that contain them all, the one where they are most central
(largest distance to the nearer window end; the earlier window on a tie); positions further apart
than any planned window covers get a 510-nt window centred on them. For ``wt-marginal`` each
position is read from the unmasked pass of its own most central window. Masked copies are batched
under the token budget (``--max-tokens``), sorted by length.

Outputs (``--output``): a TSV per RNA for ``--pppl`` (``id length scored pll pppl``), the
variants file's columns plus one named after the method for ``--variants``, an HDF5 file for
``--saturation`` (:class:`SaturationStore`) with PNG heat maps in ``<output stem>_plots/`` with
``--plot``. The run writes ``OUTPUT.partial`` and renames it when complete; its settings and the
digests of its inputs are kept (``OUTPUT.json`` beside a TSV, the attributes of the HDF5 file), so
a rerun with the same arguments resumes, and one with other settings is refused.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import logging
import math
import random
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .alphabet import MAX_RESIDUES, Alphabet, encode_rna
from .cpu import onednn_supports
from .data.batching import same_cost, sorted_batches
from .data.fasta import input_path
from .data.records import InvalidRecordError, valid_records
from .digest import records_digest
from .model import ProtRNA
from .options import add_options
from .runtime import DEFAULT_MODEL, DEFAULT_OVERLAP, pack_if_owned, plan_windows, prepare_model, token_budget
from .runtime.paths import check_input_file, check_output_file, make_parent, safe_file_names
from .runtime.resume import (
    LineJournal,
    OtherRunError,
    check_same_run,
    commit,
    partial_path,
    plain,
    read_settings_file,
    write_settings_file,
)
from .runtime.store import allocate_dataset

log = logging.getLogger(__name__)

#: Columns of saturation tables and of per-position log-probabilities.
NUCLEOTIDES = "ACGU"
METHODS = ("masked-marginal", "wt-marginal", "pseudo-likelihood")
MODES = ("pppl", "variants", "saturation")
_ALPHABET = Alphabet()
_NUCLEOTIDE_IDS = [_ALPHABET.get_idx(letter.lower()) for letter in NUCLEOTIDES]
_COLUMN_OF_ID = {token: column for column, token in enumerate(_NUCLEOTIDE_IDS)}
#: Distinct forward passes gathered, sorted and batched together: bounds memory on large inputs.
CHUNK_PASSES = 4096


# ---- mutations ---------------------------------------------------------------------------------

_MUTATION = re.compile(r"([A-Za-z])(\d+)([A-Za-z])")
_WILD_TYPE = {"", "wt", "_wt", "wildtype", "wild-type"}


@dataclasses.dataclass(frozen=True)
class Substitution:
    """One substitution: ``position`` is 1-based as written; letters are A, C, G or U."""

    position: int
    reference: str
    mutant: str

    def __str__(self) -> str:
        return f"{self.reference}{self.position}{self.mutant}"


def parse_mutations(text: str, sequence: str) -> tuple[Substitution, ...]:
    """The substitutions of ``text`` (``G12A`` or ``G12A:C40U``; T counts as U), checked against
    ``sequence``. ``WT`` or an empty string is the wild type (no substitution, score 0).

    >>> parse_mutations("g2a:C4t", "GGACG")
    (Substitution(position=2, reference='G', mutant='A'), Substitution(position=4, reference='C', mutant='U'))
    >>> parse_mutations("C3G", "GGACG")
    Traceback (most recent call last):
    ...
    ValueError: mutation 'C3G': position 3 is A in the sequence, not C
    """
    if text.strip().lower() in _WILD_TYPE:
        return ()
    substitutions: list[Substitution] = []
    seen: set[int] = set()
    for part in text.split(":"):
        part = part.strip()
        match = _MUTATION.fullmatch(part)
        if not match:
            raise ValueError(f"mutation {part!r} is not of the form G12A (reference letter, 1-based "
                             "position, new letter; several joined by ':')")
        reference, position, mutant = match.group(1).upper(), int(match.group(2)), match.group(3).upper()
        reference, mutant = reference.replace("T", "U"), mutant.replace("T", "U")
        for letter in (reference, mutant):
            if letter not in NUCLEOTIDES:
                raise ValueError(f"mutation {part!r}: {letter} is not a nucleotide (A, C, G, U or T)")
        if not 1 <= position <= len(sequence):
            raise ValueError(f"mutation {part!r}: position {position} is outside the sequence (1..{len(sequence)})")
        found = sequence[position - 1].upper().replace("T", "U")
        if found != reference:
            what = found if found in NUCLEOTIDES else f"{sequence[position - 1]!r} (not A, C, G or U)"
            raise ValueError(f"mutation {part!r}: position {position} is {what} in the sequence, not {reference}")
        if mutant == reference:
            raise ValueError(f"mutation {part!r} does not change the sequence")
        if position in seen:
            raise ValueError(f"mutation {part!r}: position {position} is mutated twice")
        seen.add(position)
        substitutions.append(Substitution(position, reference, mutant))
    return tuple(substitutions)


@dataclasses.dataclass(frozen=True)
class VariantRow:
    """One row of a variants file: ``values`` holds every column as read (for the output)."""

    line: int
    id: str
    mutations: str
    substitutions: tuple[Substitution, ...]
    values: tuple[str, ...]


def read_variants(
    path: str | Path,
    sequences: Mapping[str, str],
    skip_invalid: bool = False,
    skipped: list[str] | None = None,
) -> tuple[list[str], list[VariantRow]]:
    """The columns and checked rows of a CSV/TSV variants file with columns ``id`` and
    ``mutations`` (others are kept). A row naming an unknown id or a bad mutation raises
    ``ValueError`` naming the file, line, id and mutation; with ``skip_invalid`` it is logged,
    appended to ``skipped`` and left out. Tab-separated when the name ends in ``.tsv``/``.tab``
    or the header holds a tab, else comma-separated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"variants file {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        first = handle.readline()
        handle.seek(0)
        tabbed = path.suffix.lower() in (".tsv", ".tab") or "\t" in first
        reader = csv.reader(handle, delimiter="\t" if tabbed else ",")
        columns = [name.strip() for name in next(reader, [])]
        missing = [name for name in ("id", "mutations") if name not in columns]
        if missing:
            raise ValueError(f"{path}: needs columns 'id' and 'mutations' in its header line; it has "
                             f"{columns or 'no header'}")
        if len(set(columns)) < len(columns):
            raise ValueError(f"{path}: repeated column names in the header: {columns}")
        id_column, mutations_column = columns.index("id"), columns.index("mutations")
        rows: list[VariantRow] = []
        for values in reader:
            line = reader.line_num
            if not any(value.strip() for value in values):
                continue
            if len(values) != len(columns):
                problem, record_id, text = f"{len(values)} fields, the header has {len(columns)}", "?", "?"
            else:
                record_id, text = values[id_column].strip(), values[mutations_column].strip()
                problem = None
                if record_id not in sequences:
                    problem = f"no RNA with id {record_id!r} in the FASTA file"
                else:
                    try:
                        substitutions = parse_mutations(text, sequences[record_id])
                    except ValueError as error:
                        problem = str(error)
            if problem is None:
                rows.append(VariantRow(line, record_id, text, substitutions, tuple(values)))
                continue
            message = f"{path}, line {line} (id {record_id!r}, mutations {text!r}): {problem}"
            if not skip_invalid:
                raise ValueError(message + "; fix the row or pass --invalid skip (--skip-invalid) to leave it out")
            log.warning("skipped %s", message)
            if skipped is not None:
                skipped.append(message)
    return columns, rows


# ---- the engine: log-probabilities from masked forward passes ----------------------------------


@dataclasses.dataclass(frozen=True)
class _Pass:
    """One forward pass: window ``[start, end)`` of sequence ``key`` with ``masked`` positions
    (0-based, in the whole sequence) replaced by ``<mask>``; ``read`` are the positions whose
    log-probabilities are kept."""

    key: object
    start: int
    end: int
    masked: tuple[int, ...]
    read: tuple[int, ...]


@dataclasses.dataclass
class _Unit:
    """Something the caller wants (an RNA's PLL, one variant's score) and the passes it needs."""

    index: int
    passes: list[_Pass]
    sequences: dict[object, list[int]]  # token ids of every sequence key the passes use


class MaskedScorer:
    """Runs masked copies of RNAs through a :class:`ProtRNA` and returns log-probabilities of
    A, C, G, U at the positions asked for; windows and batching as described in the module doc.

    >>> from protrna import ProtRNA, ProtRNAConfig
    >>> model = ProtRNA(ProtRNAConfig(num_layers=1, embed_dim=64, attention_heads=1))
    >>> scorer = MaskedScorer(model, window=8, window_overlap=4)
    >>> scorer.windows(20), scorer.window_for(20, (9,)), scorer.window_for(20, (2, 8))
    ([(0, 8), (4, 12), (8, 16), (12, 20)], (4, 12), (1, 9))
    """

    def __init__(
        self,
        model: ProtRNA,
        max_tokens: int | None = None,
        window_overlap: int = DEFAULT_OVERLAP,
        window: int = MAX_RESIDUES,
    ):
        if window > MAX_RESIDUES:
            raise ValueError(f"window must be at most {MAX_RESIDUES} nt, not {window}")
        plan_windows(window + 1, window, window_overlap)  # checks the overlap now, not mid-run
        self.model = model
        self.max_tokens = token_budget(max_tokens, model.device)
        self.window = window
        self.overlap = window_overlap
        self.passes_run = 0

    def windows(self, length: int) -> list[tuple[int, int]]:
        return plan_windows(length, self.window, self.overlap)

    def window_for(self, length: int, positions: Sequence[int]) -> tuple[int, int]:
        """The window a pass masking ``positions`` (0-based) runs on."""
        low, high = min(positions), max(positions)
        best, margin = None, -1
        for start, end in self.windows(length):
            if start <= low and high < end and min(low - start, end - 1 - high) > margin:
                best, margin = (start, end), min(low - start, end - 1 - high)
        if best is not None:
            return best
        if high - low + 1 > self.window:
            raise ValueError(f"positions {low + 1} and {high + 1} are {high - low + 1} nt apart, more than the "
                             f"{self.window} nt the model sees at once: they cannot be masked together")
        start = min(max(0, (low + high + 1) // 2 - self.window // 2), length - self.window)
        return start, start + self.window

    def masked_pass(self, key: object, length: int, positions: Sequence[int]) -> _Pass:
        positions = tuple(sorted(positions))
        start, end = self.window_for(length, positions)
        return _Pass(key, start, end, positions, positions)

    def unmasked_passes(self, key: object, length: int) -> list[_Pass]:
        """One pass per window, each reading the positions for which it is the most central."""
        read: dict[tuple[int, int], list[int]] = {}
        for position in range(length):
            read.setdefault(self.window_for(length, (position,)), []).append(position)
        return [_Pass(key, start, end, (), tuple(positions)) for (start, end), positions in read.items()]

    def masked_log_probs(self, sequence: str, positions: Sequence[int] | None = None) -> np.ndarray:
        """``(len(positions), 4)`` log-probabilities of A C G U at each position (0-based; default
        all) with that position alone masked: the passes behind the PLL and saturation tables.

        >>> from protrna import ProtRNAConfig
        >>> model = ProtRNA(ProtRNAConfig(num_layers=1, embed_dim=64, attention_heads=1))
        >>> MaskedScorer(model).masked_log_probs("GGAC", [0, 3]).shape
        (2, 4)
        """
        ids = encode_rna(sequence)
        positions = range(len(ids)) if positions is None else positions
        passes = [self.masked_pass(0, len(ids), (i,)) for i in positions]
        found = dict(self.run({0: ids}, passes))
        return np.concatenate([found[i] for i in range(len(passes))]) if passes else np.zeros((0, 4))

    def run(self, sequences: Mapping[object, list[int]], passes: Sequence[_Pass],
            on_batch: Callable[[int], None] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(i, log_probs)`` for each ``passes[i]`` as its batch finishes: ``log_probs`` is
        (len(read), 4) float64, columns A C G U. ``on_batch(n)`` is called after each batch of n."""
        sizes = [p.end - p.start + 2 for p in passes]
        for batch in sorted_batches(sizes, max_cost=self.max_tokens, cost=same_cost, longest_first=True):
            token_lists = []
            for i in batch:
                p = passes[i]
                ids = list(sequences[p.key][p.start : p.end])
                for position in p.masked:
                    ids[position - p.start] = _ALPHABET.mask_idx
                token_lists.append(ids)
            results = self._forward(token_lists, [[r - passes[i].start for r in passes[i].read] for i in batch])
            self.passes_run += len(batch)
            if on_batch:
                on_batch(len(batch))
            yield from zip(batch, results)

    @torch.inference_mode()
    def _forward(self, token_lists: list[list[int]], reads: list[list[int]]) -> list[np.ndarray]:
        tokens = _ALPHABET.pad_batch(token_lists)
        logits = self.model(tokens)["logits"]  # (B, T, 38)
        rows = torch.tensor([row for row, read in enumerate(reads) for _ in read], device=logits.device)
        columns = torch.tensor([1 + r for read in reads for r in read], device=logits.device)  # +1: BOS
        # Only the rows read go through the softmax, in float32 whatever the model computes in.
        picked = logits[rows, columns].float().log_softmax(-1)[:, _NUCLEOTIDE_IDS]
        picked = picked.double().cpu().numpy()
        return np.split(picked, np.cumsum([len(read) for read in reads])[:-1])


def _evaluate(scorer: MaskedScorer, units: Iterable[_Unit], on_batch: Callable[[int], None] | None = None
              ) -> Iterator[tuple[_Unit, dict[_Pass, np.ndarray]]]:
    """Each unit with the log-probabilities of its passes, in completion order.

    Units are gathered until their passes fill a chunk; a pass that several units need (every
    substitution at one position, an RNA's unmasked windows, its wild-type PLL) runs once per
    chunk, and the previous chunk's results are kept for the next one, so that units grouped by
    RNA share their passes across chunks too.
    """
    carried: dict[_Pass, np.ndarray] = {}
    for chunk in _chunks(units, CHUNK_PASSES):
        sequences: dict[object, list[int]] = {}
        results: dict[_Pass, np.ndarray] = {}
        waiting: dict[_Pass, list[int]] = {}  # pass -> units (positions in chunk) that need it
        pending: list[int] = []
        for position, unit in enumerate(chunk):
            sequences.update(unit.sequences)
            missing = 0
            for p in set(unit.passes):
                if p in carried:
                    results[p] = carried[p]
                    continue
                waiting.setdefault(p, []).append(position)
                missing += 1
            pending.append(missing)
        for position, unit in enumerate(chunk):
            if pending[position] == 0:
                yield unit, {p: results[p] for p in unit.passes}
        todo = list(waiting)  # insertion order: the units' order, which the length sort keeps
        for i, log_probs in scorer.run(sequences, todo, on_batch):
            results[todo[i]] = log_probs
            for position in waiting[todo[i]]:
                pending[position] -= 1
                if pending[position] == 0:
                    yield chunk[position], {p: results[p] for p in chunk[position].passes}
        carried = results


def _chunks(units: Iterable[_Unit], passes_per_chunk: int) -> Iterator[list[_Unit]]:
    chunk: list[_Unit] = []
    count = 0
    for unit in units:
        chunk.append(unit)
        count += len(unit.passes)
        if count >= passes_per_chunk:
            yield chunk
            chunk, count = [], 0
    if chunk:
        yield chunk


# ---- what each score needs, and how it is put together ----------------------------------------


@dataclasses.dataclass(frozen=True)
class PseudoLikelihood:
    """PLL of one RNA over its ``scored`` A/C/G/U positions; ``pppl = exp(-pll / scored)``."""

    id: str
    length: int
    scored: int
    pll: float

    @property
    def pppl(self) -> float:
        return math.exp(-self.pll / self.scored) if self.scored else math.nan


def _pll_passes(scorer: MaskedScorer, key: object, ids: Sequence[int]) -> list[_Pass]:
    """One pass per A/C/G/U position, that position masked."""
    return [scorer.masked_pass(key, len(ids), (i,)) for i, token in enumerate(ids) if token in _COLUMN_OF_ID]


def _pll(passes: Iterable[_Pass], results: Mapping[_Pass, np.ndarray], ids: Sequence[int]) -> float:
    return float(sum(results[p][0, _COLUMN_OF_ID[ids[p.masked[0]]]] for p in passes))


def _saturation_table(passes: Iterable[_Pass], results: Mapping[_Pass, np.ndarray], ids: Sequence[int]) -> np.ndarray:
    table = np.full((len(ids), len(NUCLEOTIDES)), np.nan)
    for p in passes:
        position = p.masked[0]
        log_probs = results[p][0]
        table[position] = log_probs - log_probs[_COLUMN_OF_ID[ids[position]]]
    return table


class _VariantPlan:
    """The passes a variant needs under one method, and its score from their results."""

    def __init__(self, scorer: MaskedScorer, method: str):
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
        self.scorer, self.method = scorer, method

    def unit(self, index: int, key: object, ids: list[int], substitutions: tuple[Substitution, ...]) -> _Unit:
        if not substitutions:  # the wild type itself: 0 by every method, nothing to run
            return _Unit(index, [], {})
        scorer, length = self.scorer, len(ids)
        if self.method == "masked-marginal":
            return _Unit(index, [scorer.masked_pass(key, length, [s.position - 1 for s in substitutions])], {key: ids})
        if self.method == "wt-marginal":
            return _Unit(index, scorer.unmasked_passes(key, length), {key: ids})
        mutant_key = (key, substitutions)
        mutant = list(ids)
        for s in substitutions:
            mutant[s.position - 1] = _NUCLEOTIDE_IDS[NUCLEOTIDES.index(s.mutant)]
        passes = _pll_passes(scorer, key, ids) + _pll_passes(scorer, mutant_key, mutant)
        return _Unit(index, passes, {key: ids, mutant_key: mutant})

    def score(self, unit: _Unit, results: Mapping[_Pass, np.ndarray], key: object,
              substitutions: tuple[Substitution, ...]) -> float:
        if not substitutions:
            return 0.0
        if self.method == "pseudo-likelihood":
            wild = [p for p in unit.passes if p.key == key]
            mutant = [p for p in unit.passes if p.key != key]
            return _pll(mutant, results, unit.sequences[(key, substitutions)]) - _pll(wild, results, unit.sequences[key])
        rows = {r: results[p][k] for p in unit.passes for k, r in enumerate(p.read)}
        return float(sum(rows[s.position - 1][NUCLEOTIDES.index(s.mutant)]
                         - rows[s.position - 1][NUCLEOTIDES.index(s.reference)] for s in substitutions))


# ---- Python API --------------------------------------------------------------------------------


def _named(sequences: Iterable[str] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    if isinstance(sequences, str):  # would otherwise be a list of one-letter RNAs
        raise TypeError(f"pass a list of sequences, e.g. [{sequences[:20]!r}], not one string")
    return [(f"#{i}", item) if isinstance(item, str) else (str(item[0]), item[1]) for i, item in enumerate(sequences)]


class _Prepared:
    """A model ready to score (loaded if named, packed for CPU inference) and its scorer; a
    caller's model gets its own layers back on exit."""

    def __init__(self, model: ProtRNA | str, max_tokens: int | None, window_overlap: int, window: int = MAX_RESIDUES,
                 dtype: str | None = None, device: str | None = None):
        owned = isinstance(model, (str, Path))
        self.model = prepare_model(model, dtype, device)
        self.scorer = MaskedScorer(self.model, max_tokens, window_overlap, window)
        self._restore = pack_if_owned(self.model, owned, self.scorer.max_tokens)
        if self.model.device.type == "cpu" and self.model.dtype == torch.bfloat16 and not onednn_supports(torch.bfloat16):
            # Measured on an AVX2-only EPYC: bf16 matmul at 0.16 GFLOP/s against 12 in float32.
            log.warning("bfloat16 on this CPU (no AVX-512 BW/VL/DQ or AVX-NE-CONVERT) runs in emulation, "
                        "far slower than float32: prefer --dtype float32 here")

    def __enter__(self) -> MaskedScorer:
        return self.scorer

    def __exit__(self, *_exc) -> None:
        if self._restore:
            self._restore()


def pseudo_likelihoods(
    model: ProtRNA | str,
    sequences: Iterable[str] | Iterable[tuple[str, str]],
    *,
    max_tokens: int | None = None,
    window_overlap: int = DEFAULT_OVERLAP,
    window: int = MAX_RESIDUES,
    progress: bool = False,
) -> list[PseudoLikelihood]:
    """:class:`PseudoLikelihood` of each RNA (strings or ``(id, sequence)`` pairs), in order.

    >>> from protrna import ProtRNA, ProtRNAConfig
    >>> model = ProtRNA(ProtRNAConfig(num_layers=1, embed_dim=64, attention_heads=1))
    >>> [(r.id, r.length, r.scored) for r in pseudo_likelihoods(model, [("t", "GGNACU")])]
    [('t', 6, 5)]
    """
    records = _named(sequences)
    encoded = [encode_rna(sequence, name) for name, sequence in records]
    with _Prepared(model, max_tokens, window_overlap, window) as scorer:
        units = [_Unit(i, _pll_passes(scorer, i, ids), {i: ids}) for i, ids in enumerate(encoded)]
        found: dict[int, float] = {}
        with tqdm(total=len(units), unit="RNA", desc="pppl", disable=not progress, dynamic_ncols=True) as bar:
            for unit, results in _evaluate(scorer, units):
                found[unit.index] = _pll(unit.passes, results, encoded[unit.index])
                bar.update(1)
    return [PseudoLikelihood(name, len(ids), len(unit.passes), found[i])
            for i, ((name, _), ids, unit) in enumerate(zip(records, encoded, units))]


def pseudo_perplexity(model: ProtRNA | str, sequences: Iterable[str] | Iterable[tuple[str, str]], **options) -> list[float]:
    """Pseudo-perplexity ``exp(-PLL / scored)`` of each RNA, in order; ``options`` as for
    :func:`pseudo_likelihoods`.

    >>> from protrna import ProtRNA, ProtRNAConfig
    >>> model = ProtRNA(ProtRNAConfig(num_layers=1, embed_dim=64, attention_heads=1))
    >>> [p > 1 for p in pseudo_perplexity(model, ["GGGAAACCC", "ACGU"])]
    [True, True]
    """
    return [result.pppl for result in pseudo_likelihoods(model, sequences, **options)]


def score_variants(
    model: ProtRNA | str,
    sequences: str | Mapping[str, str],
    variants: Iterable[str] | Iterable[tuple[str, str]],
    method: str = "masked-marginal",
    *,
    max_tokens: int | None = None,
    window_overlap: int = DEFAULT_OVERLAP,
    window: int = MAX_RESIDUES,
    progress: bool = False,
) -> list[float]:
    """Score each variant (see the module doc for the methods), in order.

    ``sequences`` is one RNA, with ``variants`` its mutation strings (``"G12A"``,
    ``"G12A:C40U"``), or a mapping id -> sequence, with ``variants`` ``(id, mutations)`` pairs.

    >>> from protrna import ProtRNA, ProtRNAConfig
    >>> model = ProtRNA(ProtRNAConfig(num_layers=1, embed_dim=64, attention_heads=1))
    >>> scores = score_variants(model, "GGGAAACCC", ["G1A", "G1A:C9U", "WT"])
    >>> len(scores), scores[2]
    (3, 0.0)
    """
    if isinstance(sequences, str):
        sequences = {"#0": sequences}
        variants = [("#0", text) for text in variants]
    keys = {name: k for k, name in enumerate(sequences)}
    encoded = {name: encode_rna(sequence, name) for name, sequence in sequences.items()}
    parsed = []
    for i, (name, text) in enumerate(variants):
        if name not in sequences:
            raise ValueError(f"variant {i} ({name!r}, {text!r}): no RNA with id {name!r}")
        try:
            parsed.append((name, parse_mutations(text, sequences[name])))
        except ValueError as error:
            raise ValueError(f"variant {i} ({name!r}, {text!r}): {error}") from None
    with _Prepared(model, max_tokens, window_overlap, window) as scorer:
        plan = _VariantPlan(scorer, method)
        # Grouped by RNA, so that the passes variants of one RNA share run once.
        order = sorted(range(len(parsed)), key=lambda i: keys[parsed[i][0]])
        units = (plan.unit(i, keys[parsed[i][0]], encoded[parsed[i][0]], parsed[i][1]) for i in order)
        scores: dict[int, float] = {}
        with tqdm(total=len(parsed), unit="variant", desc=method, disable=not progress, dynamic_ncols=True) as bar:
            for unit, results in _evaluate(scorer, units):
                name, substitutions = parsed[unit.index]
                scores[unit.index] = plan.score(unit, results, keys[name], substitutions)
                bar.update(1)
    return [scores[i] for i in range(len(parsed))]


def saturation(
    model: ProtRNA | str,
    sequences: Iterable[str] | Iterable[tuple[str, str]],
    *,
    max_tokens: int | None = None,
    window_overlap: int = DEFAULT_OVERLAP,
    window: int = MAX_RESIDUES,
    progress: bool = False,
) -> list[np.ndarray]:
    """The ``(L, 4)`` masked-marginal table of every single substitution of each RNA, columns
    A C G U (the wild-type entry 0; NaN rows at ambiguous letters), in order.

    >>> from protrna import ProtRNA, ProtRNAConfig
    >>> model = ProtRNA(ProtRNAConfig(num_layers=1, embed_dim=64, attention_heads=1))
    >>> table = saturation(model, ["GAN"])[0]
    >>> table.shape, float(table[0, 2]), float(table[1, 0]), bool(np.isnan(table[2]).all())
    ((3, 4), 0.0, 0.0, True)
    """
    records = _named(sequences)
    encoded = [encode_rna(sequence, name) for name, sequence in records]
    tables: dict[int, np.ndarray] = {}
    with _Prepared(model, max_tokens, window_overlap, window) as scorer:
        units = [_Unit(i, _pll_passes(scorer, i, ids), {i: ids}) for i, ids in enumerate(encoded)]
        with tqdm(total=len(units), unit="RNA", desc="saturation", disable=not progress, dynamic_ncols=True) as bar:
            for unit, results in _evaluate(scorer, units):
                tables[unit.index] = _saturation_table(unit.passes, results, encoded[unit.index])
                bar.update(1)
    return [tables[i] for i in range(len(records))]


# ---- a control: shuffles that keep dinucleotide counts ------------------------------------------


def dinucleotide_shuffle(sequence: str, rng: random.Random | int | None = None) -> str:
    """A random sequence with exactly the dinucleotide counts of ``sequence`` (hence its letter
    counts and its first and last letter), uniform over all such sequences.

    Altschul & Erickson (1985) as made uniform by Kandel et al. (1996): each dinucleotide is an
    edge of a multigraph on the letters, and a sequence is a walk using every edge once. Every
    letter but the last picks at random the edge it leaves by for the last time; the picks are
    redrawn until they form a tree leading to the last letter (else the walk would strand edges);
    the other edges out of each letter are shuffled and the walk follows them in that order.

    >>> dinucleotide_shuffle("GGGAAACCCUUU", rng=0)[0], dinucleotide_shuffle("GGGAAACCCUUU", rng=0)[-1]
    ('G', 'U')
    """
    if len(sequence) < 3:
        return sequence
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    following: dict[str, list[str]] = {}
    for a, b in zip(sequence, sequence[1:]):
        following.setdefault(a, []).append(b)
    last = sequence[-1]
    while True:
        exits = {letter: rng.randrange(len(out)) for letter, out in following.items() if letter != last}
        if all(_leads_to(letter, last, {k: following[k][i] for k, i in exits.items()}) for letter in exits):
            break
    order: dict[str, list[str]] = {}
    for letter, out in following.items():
        out = list(out)
        final = out.pop(exits[letter]) if letter in exits else None
        rng.shuffle(out)
        order[letter] = out + ([final] if final is not None else [])
    walk, used = [sequence[0]], dict.fromkeys(order, 0)
    for _ in range(len(sequence) - 1):
        here = walk[-1]
        walk.append(order[here][used[here]])
        used[here] += 1
    return "".join(walk)


def _leads_to(letter: str, last: str, exit_of: Mapping[str, str]) -> bool:
    seen = set()
    while letter != last:
        if letter in seen:
            return False
        seen.add(letter)
        letter = exit_of[letter]
    return True


# ---- pictures ----------------------------------------------------------------------------------


def plot_saturation(path: str | Path, table: np.ndarray, sequence: str, title: str | None = None, dpi: int = 110) -> Path:
    """Write a PNG heat map of a saturation table (positions across, A C G U down; blue where a
    substitution is more likely than the wild type, red where less, wild-type cells dotted).

    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "t.png")
    >>> plot_saturation(out, np.zeros((3, 4)), "GAC").stat().st_size > 0
    True
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    table = np.asarray(table, dtype=float)
    length = table.shape[0]
    if len(sequence) != length:
        raise ValueError(f"the table is for {length} nt, the sequence has {len(sequence)}")
    figure = Figure(figsize=(min(30.0, max(6.0, 2.5 + 0.06 * length)), 2.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    finite = table[np.isfinite(table)]
    reach = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
    # Cell (i, b) centred on (i + 1, b): positions 1-based as in the mutation strings.
    image = axes.imshow(table.T, cmap="RdBu", vmin=-reach, vmax=reach, aspect="auto", interpolation="nearest",
                        extent=(0.5, length + 0.5, len(NUCLEOTIDES) - 0.5, -0.5))
    wild = [(i + 1, NUCLEOTIDES.index(c)) for i, c in enumerate(sequence.upper().replace("T", "U")) if c in NUCLEOTIDES]
    if wild:
        x, y = np.array(wild).T
        axes.scatter(x, y, s=max(1.0, min(12.0, 1500 / length)), c="black", marker=".", linewidths=0)
    axes.set_yticks(range(len(NUCLEOTIDES)), list(NUCLEOTIDES))
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("position")
    figure.colorbar(image, ax=axes, label="log p(mutant) - log p(wt)", shrink=0.9)
    axes.set_title(title or f"{length} nt")
    path = Path(path)
    figure.savefig(path, dpi=dpi)
    return path


# ---- outputs that resume -----------------------------------------------------------------------


#: What a changed digest means in this job's terms.
_DIGEST_WORDS = {"input_sha256": "the FASTA records (ids or sequences)", "variants_sha256": "the variants file's rows"}


def _check_same_run(path: Path, recorded: Mapping, settings: Mapping, finished: bool) -> None:
    check_same_run(path, {k: plain(v) for k, v in recorded.items()}, settings, finished=finished,
                   words=_DIGEST_WORDS)


class _TsvOutput:
    """A TSV written as rows finish: ``OUT.partial`` holds ``row<TAB>values`` lines in completion
    order (a torn last line is cut off on resume); ``OUT.json`` the settings. When every row is
    in, ``OUT`` is written in input order and the partial file removed."""

    def __init__(self, path: Path):
        self.path = path
        self.partial = partial_path(path)
        self.settings_path = path.with_name(path.name + ".json")

    def refuse_foreign(self) -> None:
        """Before any work: never write over a file this job did not make."""
        for existing in (self.path, self.partial):
            if existing.exists() and not self._recorded():
                raise FileExistsError(f"{existing} exists and was not written by protrna score (no "
                                      f"{self.settings_path.name} beside it); remove it or choose another output")

    def _recorded(self) -> dict | None:
        recorded = read_settings_file(self.settings_path)
        return recorded if recorded is not None and recorded.get("job") == "protrna score" else None

    def complete_already(self, settings: dict) -> bool:
        """Whether ``OUT`` is finished with these settings (refused if with others)."""
        if not self.path.exists():
            return False
        _check_same_run(self.path, self._recorded() or {}, settings, finished=True)
        return True

    def begin(self, settings: dict, width: int) -> dict[int, list[str]]:
        """Rows done by an earlier run with the same settings (refused with other settings)."""
        done: dict[int, list[str]] = {}
        if self.partial.exists():
            _check_same_run(self.partial, self._recorded() or {}, settings, finished=False)
            done = self._read_partial(width)
        write_settings_file(self.settings_path, {"job": "protrna score", **settings})
        if not self.partial.exists():
            self.journal.start(["row"])
        return done

    @property
    def journal(self) -> LineJournal:
        return LineJournal(self.partial, lines=1, header_lines=1)  # header: "row"

    def _read_partial(self, width: int) -> dict[int, list[str]]:
        def complete(lines: list[str]) -> bool:
            fields = lines[0].split("\t")
            return len(fields) == width + 1 and fields[0].isdigit()

        _, records = self.journal.read(complete)
        return {int(fields[0]): fields[1:] for fields in (lines[0].split("\t") for lines in records)}

    def finish(self, header: list[str], rows: Iterable[list[str]]) -> None:
        text = io.StringIO()
        writer = csv.writer(text, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        self.journal.finish(self.path, text.getvalue())


def _number(value: float) -> str:
    return repr(float(value))  # the shortest text that reads back as the same float


class SaturationStore:
    """The HDF5 file of ``protrna score --saturation`` (N RNAs in input order)::

        /ids, /sequences   (N,)    utf-8 (h5py gives bytes: ``h5["ids"].asstr()[:]``)
        /lengths           (N,)    nucleotides per RNA
        /offsets           (N+1,)  RNA i owns rows offsets[i]:offsets[i+1] of /scores
        /scores            (sum of lengths, 4) float32, columns A C G U: the masked-marginal score
                           of each substitution, 0 for the wild-type letter, NaN at ambiguous letters
        /pll, /pppl        (N,)    float64, from the same passes; /scored (N,) positions in the PLL
        /done              (N,)    1 once an RNA is written (resume bookkeeping)
        attributes: columns, method, model, dtype, window, overlap, input_sha256, protrna_version, complete

    :func:`read_saturation` reads it back.
    """

    def __init__(self, h5: h5py.File, path: Path):
        self.h5, self.path = h5, path

    @staticmethod
    def open_file(path: Path, mode: str) -> h5py.File:
        try:
            h5 = h5py.File(path, mode)
        except OSError as error:
            if "lock" in str(error).lower():
                raise FileExistsError(f"{path} is open in another process (another score run writing it?)") from None
            raise FileExistsError(f"{path} exists and is not an HDF5 file from protrna score ({error}); remove it "
                                  "or choose another output") from None
        if mode != "w" and (h5.attrs.get("job") != "protrna score" or "done" not in h5):
            h5.close()
            raise FileExistsError(f"{path} is not a protrna score saturation file (or is damaged); remove it or "
                                  "choose another output")
        return h5

    @classmethod
    def open(cls, path: Path, records: Sequence[tuple[str, str]], settings: dict) -> "SaturationStore":
        if path.exists():
            h5 = cls.open_file(path, "r+")
            try:
                _check_same_run(path, dict(h5.attrs), settings, finished=False)
            except OtherRunError:
                h5.close()
                raise
            return cls(h5, path)
        h5 = cls.open_file(path, "w")
        text = h5py.string_dtype("utf-8")
        lengths = np.array([len(sequence) for _, sequence in records], dtype=np.int64)
        h5.create_dataset("ids", data=np.array([i for i, _ in records], dtype=object), dtype=text)
        h5.create_dataset("sequences", data=np.array([s for _, s in records], dtype=object), dtype=text)
        h5.create_dataset("lengths", data=lengths)
        h5.create_dataset("offsets", data=np.concatenate([[0], np.cumsum(lengths)]))
        # Space reserved now, so that a killed run cannot leave a half-resized dataset.
        allocate_dataset(h5, "scores", (int(lengths.sum()), len(NUCLEOTIDES)), np.float32)
        for name, dtype in (("pll", np.float64), ("pppl", np.float64), ("scored", np.int64)):
            allocate_dataset(h5, name, (len(records),), dtype)
        h5.create_dataset("done", data=np.zeros(len(records), dtype=np.uint8))  # written: zero for sure
        h5.attrs.update({"job": "protrna score", "columns": NUCLEOTIDES, "method": "masked-marginal",
                         **settings, "complete": False})
        h5.flush()
        return cls(h5, path)

    def pending(self) -> np.ndarray:
        return ~self.h5["done"][:].astype(bool)

    def write(self, index: int, table: np.ndarray, pll: float, scored: int) -> None:
        start, end = self.h5["offsets"][index : index + 2]
        self.h5["scores"][start:end] = table.astype(np.float32)
        self.h5["pll"][index] = pll
        self.h5["pppl"][index] = math.exp(-pll / scored) if scored else math.nan
        self.h5["scored"][index] = scored
        self.h5.flush()  # the data first, then the flag: a record marked done is on disk
        self.h5["done"][index] = 1
        self.h5.flush()

    def close(self, complete: bool) -> None:
        self.h5.attrs["complete"] = complete
        self.h5.close()


def read_saturation(path: str | Path) -> Iterator[tuple[str, str, np.ndarray]]:
    """``(id, sequence, table)`` for each RNA of a :class:`SaturationStore` file, in order."""
    with h5py.File(path, "r") as h5:
        offsets = h5["offsets"][:]
        for i, (record_id, sequence) in enumerate(zip(h5["ids"].asstr()[:], h5["sequences"].asstr()[:])):
            yield record_id, sequence, h5["scores"][offsets[i] : offsets[i + 1]]


# ---- the job -----------------------------------------------------------------------------------


def score_fasta(
    fasta: str | Path,
    output: str | Path,
    model: ProtRNA | str = DEFAULT_MODEL,
    *,
    mode: str = "pppl",
    variants: str | Path | None = None,
    method: str = "masked-marginal",
    plot: bool = False,
    dtype: str | None = None,
    device: str | None = None,
    max_tokens: int | None = None,
    window_overlap: int = DEFAULT_OVERLAP,
    skip_invalid: bool = False,
    unique_ids: bool = False,
    progress: bool = True,
) -> Path:
    """Score the RNAs of ``fasta`` into ``output`` (see the module doc) and return its path.

    ``mode`` is ``pppl``, ``variants`` (with ``variants``, a CSV/TSV file, and ``method``) or
    ``saturation`` (``output`` an HDF5 file; ``plot`` draws a PNG per RNA). Rerunning with the
    same arguments resumes an interrupted run; a finished output is left alone.
    """
    fasta, output = Path(fasta), Path(output)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if method not in METHODS:
        raise ValueError(f"--method takes {', '.join(METHODS)}, not {method!r}")
    if (mode == "variants") != (variants is not None):
        raise ValueError("--variants FILE goes with the variants mode only" if variants is not None
                         else "the variants mode needs a variants file (--variants FILE)")
    if plot and mode != "saturation":
        raise ValueError("--plot draws saturation tables: it goes with --saturation")
    hdf5 = output.suffix.lower() in (".h5", ".hdf5")
    if mode == "saturation" and not hdf5:
        raise ValueError(f"--saturation writes HDF5: give an output ending in .h5, not {output.name}")
    if mode != "saturation" and hdf5:
        raise ValueError(f"--{mode} writes a TSV table: give an output such as scores.tsv, not {output.name}")
    plan_windows(MAX_RESIDUES + 1, MAX_RESIDUES, window_overlap)  # checks the overlap, before any work
    if max_tokens is not None:
        token_budget(max_tokens, torch.device("cpu"))
    check_input_file(fasta)
    if variants is not None:
        check_input_file(variants, "--variants", "a CSV or TSV file of variants")
    check_output_file(output, example="scores.h5" if hdf5 else "scores.tsv")
    for given in filter(None, (fasta, variants and Path(variants))):
        if output.resolve() == given.resolve() or partial_path(output).resolve() == given.resolve():
            raise ValueError(f"--output {output} would write over the input {given}")
    if mode == "saturation":
        for existing in (output, partial_path(output)):
            if existing.exists():
                SaturationStore.open_file(existing, "r").close()
    else:
        _TsvOutput(output).refuse_foreign()

    skipped: list[str] = []
    records = [(r.id, r.sequence) for r in valid_records(fasta, skip_invalid, skipped, unique_ids)]
    if not records:
        raise InvalidRecordError(f"{fasta}: no records to score")
    settings = {"mode": mode}
    rows: list[VariantRow] = []
    columns: list[str] = []
    if mode == "variants":
        columns, rows = read_variants(variants, dict(records), skip_invalid, skipped)
        if not rows:
            raise ValueError(f"{variants}: no variants to score")
        score_column = method.replace("-", "_")
        if score_column in columns:
            raise ValueError(f"{variants} has a column {score_column!r} already, the name of the output's "
                             "score column; rename it")
        settings["method"] = method
        settings["variants_sha256"] = records_digest((row.id, "\t".join(row.values)) for row in rows)
    make_parent(output)

    with _Prepared(model, max_tokens, window_overlap, dtype=dtype, device=device) as scorer:
        settings.update({
            "model": str(getattr(scorer.model, "source", "in-memory model")),
            "dtype": str(scorer.model.dtype).removeprefix("torch."),
            "window": scorer.window,
            "overlap": window_overlap,
            "input_sha256": records_digest(records),
            "protrna_version": __version__,
        })
        if mode == "saturation":
            _score_saturation(scorer, records, output, settings, plot, progress)
        else:
            _score_table(scorer, records, rows, columns, method, output, settings, progress)
    log.info("wrote %s%s", output, f" ({len(skipped)} invalid records or rows skipped)" if skipped else "")
    return output


def _progress(total: int, done: int, unit: str, desc: str, enabled: bool, scorer: MaskedScorer) -> tuple[tqdm, Callable]:
    bar = tqdm(total=total, initial=done, unit=unit, desc=desc, disable=not enabled, dynamic_ncols=True)

    def on_batch(_size: int) -> None:  # masked passes, so a long RNA shows movement too
        bar.set_postfix_str(f"{scorer.passes_run:,} passes")

    return bar, on_batch


def _score_table(scorer: MaskedScorer, records: list[tuple[str, str]], rows: list[VariantRow], columns: list[str],
                 method: str, output: Path, settings: dict, progress: bool) -> None:
    sink = _TsvOutput(output)
    if sink.complete_already(settings):
        log.info("%s is complete already; nothing to do", output)
        return
    encoded = [encode_rna(sequence, name) for name, sequence in records]
    if settings["mode"] == "pppl":
        header, width, count = ["id", "length", "scored", "pll", "pppl"], 3, len(records)
    else:
        header, width, count = columns + [method.replace("-", "_")], 1, len(rows)
    done = sink.begin(settings, width)
    if done:
        log.info("resuming %s: %d of %d already scored", sink.partial, len(done), count)

    if settings["mode"] == "pppl":
        units = (_Unit(i, _pll_passes(scorer, i, encoded[i]), {i: encoded[i]}) for i in range(count) if i not in done)

        def values(unit: _Unit, results) -> list[str]:
            pll = _pll(unit.passes, results, encoded[unit.index])
            scored = len(unit.passes)
            return [str(scored), _number(pll), _number(math.exp(-pll / scored) if scored else math.nan)]
    else:
        plan = _VariantPlan(scorer, method)
        key_of = {name: k for k, (name, _) in enumerate(records)}
        # Grouped by RNA, so that the passes the variants of one RNA share run once.
        order = sorted((i for i in range(count) if i not in done), key=lambda i: key_of[rows[i].id])
        units = (plan.unit(i, key_of[rows[i].id], encoded[key_of[rows[i].id]], rows[i].substitutions) for i in order)

        def values(unit: _Unit, results) -> list[str]:
            row = rows[unit.index]
            return [_number(plan.score(unit, results, key_of[row.id], row.substitutions))]

    bar, on_batch = _progress(count, len(done), "RNA" if settings["mode"] == "pppl" else "variant",
                              settings.get("method", "pppl"), progress, scorer)
    with bar, sink.journal.appending() as partial:
        for unit, results in _evaluate(scorer, units, on_batch):
            done[unit.index] = values(unit, results)
            partial.append(["\t".join([str(unit.index), *done[unit.index]])])
            bar.update(1)
    if settings["mode"] == "pppl":
        table = ([name, str(len(sequence)), *done[i]] for i, (name, sequence) in enumerate(records))
    else:
        table = ([*row.values, *done[i]] for i, row in enumerate(rows))
    sink.finish(header, table)


def _score_saturation(scorer: MaskedScorer, records: list[tuple[str, str]], output: Path, settings: dict,
                      plot: bool, progress: bool) -> None:
    plot_dir = output.with_name(output.stem + "_plots")
    png = dict(enumerate(f"{name}.png" for name in safe_file_names([name for name, _ in records])))

    def draw_missing(path: Path) -> None:
        if not plot:
            return
        plot_dir.mkdir(parents=True, exist_ok=True)
        for i, (name, sequence, table) in enumerate(read_saturation(path)):
            if not (plot_dir / png[i]).exists():
                plot_saturation(plot_dir / png[i], table, sequence, title=name)

    if output.exists():
        with SaturationStore.open_file(output, "r") as h5:
            _check_same_run(output, dict(h5.attrs), settings, finished=True)
        log.info("%s is complete already; nothing to do", output)
        draw_missing(output)
        return
    partial = partial_path(output)
    store = SaturationStore.open(partial, records, settings)
    complete = False
    try:
        pending = store.pending()
        if not pending.all():
            log.info("resuming %s: %d of %d RNAs already scored", partial, (~pending).sum(), len(pending))
        encoded = {i: encode_rna(records[i][1], records[i][0]) for i in np.flatnonzero(pending)}
        units = (_Unit(i, _pll_passes(scorer, i, ids), {i: ids}) for i, ids in encoded.items())
        if plot:
            plot_dir.mkdir(parents=True, exist_ok=True)
        bar, on_batch = _progress(len(pending), int((~pending).sum()), "RNA", "saturation", progress, scorer)
        with bar:
            for unit, results in _evaluate(scorer, units, on_batch):
                ids = encoded.pop(unit.index)
                table = _saturation_table(unit.passes, results, ids)
                store.write(unit.index, table, _pll(unit.passes, results, ids), len(unit.passes))
                if plot:
                    name, sequence = records[unit.index]
                    plot_saturation(plot_dir / png[unit.index], table, sequence, title=name)
                bar.update(1)
        complete = not store.pending().any()
    finally:
        store.close(complete)
    if complete:
        commit(partial, output)
        draw_missing(output)


# ---- command line ------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "score",
        help="zero-shot scores from the language model: pseudo-perplexity, variant effects, saturation",
        description="Zero-shot scores from the language model: pseudo-perplexity per RNA, variant effects, "
        "or saturation tables of every single substitution (see protrna.score for the definitions).",
        epilog="examples: protrna score rnas.fa --pppl -o pppl.tsv | "
        "protrna score rnas.fa --variants variants.csv --method masked-marginal -o effects.tsv | "
        "protrna score rnas.fa --saturation --plot -o saturation.h5",
    )
    parser.add_argument("input", type=Path, help="FASTA file (.gz ok; 3-line .dbn works too; - for stdin)")
    parser.add_argument("--output", "-o", type=Path, required=True,
                        help="TSV for --pppl and --variants, HDF5 (.h5) for --saturation")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--pppl", action="store_true",
                      help="pseudo-log-likelihood and pseudo-perplexity of each RNA (one masked pass per nucleotide)")
    what.add_argument("--variants", type=Path, metavar="FILE",
                      help="CSV/TSV with columns id and mutations (G12A or G12A:C40U, 1-based): one score per row")
    what.add_argument("--saturation", action="store_true",
                      help="every single substitution of every RNA, an L x 4 table (A C G U) into HDF5")
    parser.add_argument("--method", choices=METHODS, default=None,
                        help="variant score (with --variants; default: masked-marginal)")
    parser.add_argument("--plot", action="store_true",
                        help="with --saturation: a heat map PNG per RNA in <output stem>_plots/")
    add_options(parser, "model", "dtype", "device", "max-tokens")
    parser.add_argument("--window-overlap", type=int, default=DEFAULT_OVERLAP,
                        help="overlap of the 510-nt windows covering longer RNAs (default: %(default)s)")
    add_options(parser, "invalid", "unique-ids", "quiet")  # --invalid covers bad variant rows too
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.method is not None and args.variants is None:
        raise ValueError("--method chooses the variant score: it goes with --variants")
    mode = "pppl" if args.pppl else "variants" if args.variants is not None else "saturation"
    with input_path(args.input) as fasta:  # '-': standard input
        path = score_fasta(
            fasta, args.output, args.model or DEFAULT_MODEL, mode=mode, variants=args.variants,
            method=args.method or "masked-marginal", plot=args.plot, dtype=args.dtype, device=args.device,
            max_tokens=args.max_tokens, window_overlap=args.window_overlap, skip_invalid=args.invalid == "skip",
            unique_ids=args.unique_ids, progress=not args.quiet,
        )
    print(path)
    return 0
