"""``protrna train-ss``: train the RotaFormer structure head on a frozen language model.

The paper's second stage (section 6 of docs/REFERENCE.md): the head learns base pairs from the
language model's last-layer representations on bpRNA TR0, and its decision threshold is chosen on
VL0. The language model is frozen, so its representations are computed once and cached on disk
(:mod:`protrna.train.features`); every epoch reads them back. Then, as one function,
:func:`train_ss`:

* records come from any reference format (``.dbn``, PDB ``.tsv``, bpseq/ct folders); RNAs longer
  than ``--max-length`` are skipped and counted;
* length-bucketed batches of several RNAs (:mod:`protrna.data.buckets`), padding masked by
  passing each RNA's length to the head;
* the loss is binary cross-entropy on the pair logits over the cells ``i < j`` of each RNA (the
  strict upper triangle: the head's logits are symmetric, so each unordered pair is counted once
  and the diagonal, which never pairs, not at all), optionally with a weight on positives;
* training runs in the shared loop (:mod:`protrna.train.loop`): checkpoints, exact resume,
  warmup + cosine, bf16, several processes;
* validation logs ``valid_loss`` and the best mean per-sequence strict F1 over the threshold grid
  (``valid_f1`` at ``valid_threshold``; the F1 of ``--protocol``, protrna's or RnaBench's; grid
  0.10-0.40 by 0.01 by default, the original's); at the end that threshold is stored in the head's
  config and ``DIR/final`` is written, a RotaFormer directory for ``protrna fold/evaluate --head``.

    protrna train-ss --model ProtRNA_pretrained --train TR0.dbn --valid VL0.dbn --output runs/ss
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import itertools
import json
import logging
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from .. import __version__
from ..alphabet import encode_rna
from ..digest import tensors_digest
from ..data.batching import pair_cost, sorted_batches
from ..data.buckets import LengthBucketBatches, MappedBatches
from ..data.records import InvalidRecordError
from ..heads.ss import RotaFormer, RotaFormerConfig
from ..metrics import PROTOCOLS, Protocol, get_protocol
from ..structure import BasePairs, StructureRecord, decode_matrix, read_reference, sigmoid
from ..options import add_options, at_least, positive
from ..pretrained import source_name
from ..runtime import DEFAULT_MODEL, DEFAULT_OVERLAP, prepare_model
from ..weights.registry import cache_root
from .features import (
    STORAGE_DTYPES,
    FeatureCache,
    FeatureSettings,
    cached_features,
    check_resume_fingerprint,
    lm_fingerprint,
)
from .loop import (
    TrainConfig,
    add_training_arguments,
    check_run_dir,
    make_accelerator,
    to_device,
    train,
)

logger = logging.getLogger(__name__)

#: Default threshold grid: 0.10, 0.11, ..., 0.40, the 31 values of the original's sweep,
#: ``np.arange(0.1, 0.4, 0.01)`` in test_downstream_ss_rnabench.py (float rounding puts ~0.4 inside);
#: the released bpRNA head's 0.25 lies inside.
DEFAULT_GRID = (0.10, 0.40, 0.01)
#: Default cap on B x L_max^2 pair cells per micro-batch.
DEFAULT_MAX_PAIRS = 2**17


# ---- data -------------------------------------------------------------------------------------


def read_structures(
    path: str | Path, max_length: int | None = None, skip_invalid: bool = False, what: str = "train"
) -> list[StructureRecord]:
    """The usable records of a reference file, RNAs over ``max_length`` nt left out (logged).

    A sequence with a letter that is no nucleotide code stops the run with a message naming file,
    record and position, or with ``skip_invalid`` is logged and left out.
    """
    records = read_reference(path)
    kept, too_long, invalid = [], 0, 0
    for record in records:
        try:
            encode_rna(record.sequence)
        except ValueError as error:
            message = f"{record.label}: {error}"
            if not skip_invalid:
                raise InvalidRecordError(f"{message}; fix it or pass --invalid skip (--skip-invalid)") from None
            logger.warning("skipped %s", message)
            invalid += 1
            continue
        if max_length is not None and len(record) > max_length:
            too_long += 1
            continue
        kept.append(record)
    left_out = [f"{too_long} longer than --max-length {max_length}"] if max_length is not None else []
    logger.info("%s: %d of %d records of %s used (%s)", what, len(kept), len(records), path,
                ", ".join(left_out + [f"{invalid} invalid skipped"]))
    if not kept:
        raise InvalidRecordError(f"{path}: no usable records (of {len(records)}; --max-length {max_length})")
    return kept


def collate_structures(features: FeatureCache, records: Sequence[StructureRecord], indices: list[int]) -> dict:
    """One batch: zero-padded representations with BOS/EOS slots, lengths, 0/1 pair targets."""
    lengths = [len(records[i]) for i in indices]
    width = max(lengths)
    reps = torch.zeros(len(indices), width + 2, features.dim)
    targets = torch.zeros(len(indices), width, width)
    for row, index in enumerate(indices):
        # The head reads nucleotides at [1 : L + 1]; it never looks at the BOS/EOS slots.
        reps[row, 1 : lengths[row] + 1] = features.per_token(index)
        pairs = torch.from_numpy(np.array(records[index].pairs.pairs))
        targets[row, pairs[:, 0], pairs[:, 1]] = 1.0
        targets[row, pairs[:, 1], pairs[:, 0]] = 1.0
    return {
        "representations": reps,
        "lengths": torch.tensor(lengths),
        "targets": targets,
        "n_items": sum(n * (n - 1) // 2 for n in lengths),
        "n_tokens": sum(lengths),
    }


# ---- loss -------------------------------------------------------------------------------------


def upper_triangle_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width, width) bool: cells ``i < j < length`` of each row.

    >>> upper_triangle_mask(torch.tensor([3, 2]), 3).sum(dim=(1, 2)).tolist()
    [3, 1]
    """
    position = torch.arange(width, device=lengths.device)
    inside = position[None, :] < lengths[:, None]  # (B, L)
    upper = position[:, None] < position[None, :]  # (L, L)
    return upper[None] & inside[:, :, None] & inside[:, None, :]


def pair_logits(model: nn.Module, batch: dict) -> torch.Tensor:
    """(B, L, L) float32 logits of a batch (the head gives (L, L) for a single RNA)."""
    logits = model(batch["representations"], lengths=batch["lengths"])
    return (logits[None] if logits.dim() == 2 else logits).float()


def structure_loss(model: nn.Module, batch: dict, pos_weight: float = 1.0) -> torch.Tensor:
    """Summed binary cross-entropy over the cells ``i < j`` of every RNA of ``batch``.

    ``pos_weight`` multiplies the loss of paired cells (pairs are ~1/L of the cells).
    """
    logits = pair_logits(model, batch)
    mask = upper_triangle_mask(batch["lengths"], logits.shape[-1])
    weight = None if pos_weight == 1.0 else torch.tensor(pos_weight, device=logits.device)
    return F.binary_cross_entropy_with_logits(
        logits[mask], batch["targets"][mask], pos_weight=weight, reduction="sum"
    )


# ---- threshold selection ----------------------------------------------------------------------


def threshold_grid(start: float, stop: float, step: float) -> list[float]:
    """``start, start + step, ..., stop`` (inclusive), rounded to remove float noise.

    >>> threshold_grid(0.05, 0.95, 0.05)[:3], len(threshold_grid(0.05, 0.95, 0.05))
    ([0.05, 0.1, 0.15], 19)
    """
    if step <= 0 or not 0 < start <= stop < 1:
        raise ValueError(f"threshold grid needs 0 < start <= stop < 1 and step > 0, got {start} {stop} {step}")
    count = int(round((stop - start) / step)) + 1
    return [round(start + k * step, 10) for k in range(count)]


def f1_by_threshold(
    probabilities: np.ndarray, reference: BasePairs, grid: Sequence[float], protocol: str | Protocol = "protrna"
) -> np.ndarray:
    """The protocol's F1 (strict ``f1`` of :mod:`protrna.metrics.protrna`, or RnaBench's
    ``f1_score``) of ``probabilities > t`` for each ``t`` in ``grid``."""
    f1_only = get_protocol(protocol).f1_only
    target = reference.to_matrix(dtype=bool)
    return np.array([f1_only(decode_matrix(probabilities, t), target) for t in grid])


def pick_threshold(grid: Sequence[float], mean_f1: Sequence[float]) -> float:
    """The grid value with the highest mean F1; among equal ones (within 1e-12) the middle one
    (the lower of two middles), which keeps the most margin on both sides.

    >>> pick_threshold([0.1, 0.2, 0.3, 0.4], [0.5, 0.7, 0.7, 0.7])
    0.3
    """
    best = max(mean_f1)
    tied = [t for t, f in zip(grid, mean_f1) if f >= best - 1e-12]
    return tied[(len(tied) - 1) // 2]


def select_threshold(
    probabilities: Sequence[np.ndarray] | Iterable[np.ndarray],
    references: Sequence[BasePairs] | Iterable[BasePairs],
    grid: Sequence[float],
    protocol: str | Protocol = "protrna",
) -> tuple[float, np.ndarray]:
    """The threshold maximising the mean per-sequence F1 of ``protocol``, and the mean F1 at each
    grid value. Probabilities are decoded as the original does: ``p > t``, nothing else. Both
    arguments may be iterators (maps are then used one at a time, never all held); references
    the protocol does not score (RnaBench: no pair) are left out of the mean.

    >>> p = np.zeros((4, 4)); p[0, 3] = p[3, 0] = 0.6; p[1, 2] = p[2, 1] = 0.3
    >>> select_threshold([p], [BasePairs(4, [(0, 3)])], [0.2, 0.4, 0.8])[0]
    0.4
    """
    protocol = get_protocol(protocol)
    total, count = np.zeros(len(grid)), 0
    unpaired = object()
    for p, r in itertools.zip_longest(probabilities, references, fillvalue=unpaired):
        if p is unpaired or r is unpaired:
            raise ValueError("need one probability map per reference")
        if protocol.is_scored(r):
            total += f1_by_threshold(p, r, grid, protocol)
            count += 1
    if not count:
        raise ValueError(f"no reference to choose a threshold on (protocol {protocol.name} needs references with pairs)")
    mean = total / count
    return pick_threshold(grid, mean), mean


class StructureValidation:
    """Validation loss and threshold choice, split over processes like
    :func:`~protrna.train.loop.evaluate_loss` (every process runs the same number of forwards).

    Calling it returns ``valid_loss`` (mean BCE per cell ``i < j``), ``valid_f1`` (best mean
    F1 of ``protocol`` on the grid) and ``valid_threshold``; the whole curve is in :attr:`last`.
    """

    def __init__(self, accelerator: Accelerator, records: Sequence[StructureRecord], features: FeatureCache,
                 grid: Sequence[float], *, batch_size: int, max_pairs: int | None, pos_weight: float,
                 protocol: str | Protocol = "protrna"):
        self.accelerator = accelerator
        self.records, self.features, self.grid = records, features, list(grid)
        self.pos_weight = pos_weight
        self.protocol = get_protocol(protocol)
        self.batches = sorted_batches([len(r) for r in records], max_items=batch_size, max_cost=max_pairs)
        self.last: dict | None = None

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> dict:
        accelerator = self.accelerator
        rank, world = accelerator.process_index, accelerator.num_processes
        totals = torch.zeros(3 + len(self.grid), dtype=torch.float64)  # loss, cells, RNAs, F1 sums
        for round_ in range(-(-len(self.batches) // world)):
            index = round_ * world + rank
            indices = self.batches[min(index, len(self.batches) - 1)]
            batch = to_device(collate_structures(self.features, self.records, indices), accelerator.device)
            logits = pair_logits(model, batch)
            if index >= len(self.batches):
                continue  # a repeated batch, run only to keep the processes in step
            mask = upper_triangle_mask(batch["lengths"], logits.shape[-1])
            weight = None if self.pos_weight == 1.0 else torch.tensor(self.pos_weight, device=logits.device)
            totals[0] += F.binary_cross_entropy_with_logits(
                logits[mask], batch["targets"][mask], pos_weight=weight, reduction="sum"
            ).double().cpu()
            totals[1] += batch["n_items"]
            for row, record_index in enumerate(indices):
                record = self.records[record_index]
                if not self.protocol.is_scored(record.pairs):
                    continue  # RnaBench leaves references without pairs out of its means
                n = len(record)
                # As `protrna evaluate`: float32 logits -> probabilities -> p > threshold.
                probabilities = sigmoid(logits[row, :n, :n].cpu().numpy()).astype(np.float32)
                totals[3:] += torch.from_numpy(f1_by_threshold(probabilities, record.pairs, self.grid, self.protocol))
                totals[2] += 1
        totals = accelerator.reduce(totals.to(accelerator.device), reduction="sum").cpu()
        if totals[2] == 0:
            raise ValueError(f"no validation record that protocol {self.protocol.name} scores (it needs pairs)")
        mean_f1 = (totals[3:] / totals[2]).numpy()
        threshold = pick_threshold(self.grid, mean_f1.tolist())
        result = {
            "valid_loss": (totals[0] / totals[1]).item(),
            "valid_f1": float(mean_f1.max()),
            "valid_threshold": threshold,
        }
        self.last = {
            "result": result,
            "mean_f1_by_threshold": dict(zip(map(str, self.grid), mean_f1.tolist())),
            "digest": tensors_digest(accelerator.unwrap_model(model).state_dict().items()),
        }
        return result

    def final(self, model: nn.Module) -> dict:
        """The evaluation of the weights as they are now (the last one, if they have not changed)."""
        if self.last is None or self.last["digest"] != tensors_digest(self.accelerator.unwrap_model(model).state_dict().items()):
            model.eval()
            self(model)
        return self.last


# ---- the command ------------------------------------------------------------------------------


def head_config(args: argparse.Namespace, input_dim: int) -> RotaFormerConfig:
    """The head's shape from the command line; the input width follows the language model."""
    return RotaFormerConfig(
        input_dim=input_dim,
        single_dim=args.single_dim,
        pair_dim=args.pair_dim,
        num_blocks=args.num_blocks,
        msa_heads=args.msa_heads,
        pair_heads=args.pair_heads,
        head_width=args.head_width,
        outer_dim=args.outer_dim,
        transition_factor=args.transition_factor,
    )


def save_head(accelerator: Accelerator, model: nn.Module, directory: Path, threshold: float, facts: dict) -> None:
    """Write the trained head with ``threshold`` in its config, plus ``train_ss.json``; atomic."""
    state = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return
    config = dataclasses.replace(accelerator.unwrap_model(model).config, threshold=threshold)
    head = RotaFormer(config)
    head.load_state_dict(state)
    temporary = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    head.save_pretrained(temporary)
    (temporary / "train_ss.json").write_text(json.dumps(facts, indent=2) + "\n")
    if directory.exists():
        shutil.rmtree(directory)
    temporary.rename(directory)
    logger.info("final head written to %s (threshold %.2f)", directory, threshold)


def train_ss(args: argparse.Namespace) -> dict:
    """Run ``protrna train-ss`` with parsed arguments; returns the last log record."""
    config = TrainConfig.from_args(args)
    check_run_dir(config)
    accelerator = make_accelerator(config)
    rank, world = accelerator.process_index, accelerator.num_processes
    grid = threshold_grid(*args.threshold_grid)

    skip_invalid, model_name = args.invalid == "skip", args.model or DEFAULT_MODEL
    train_records = read_structures(args.train, args.max_length, skip_invalid, "train")
    valid_records = read_structures(args.valid, args.max_length, skip_invalid, "valid")

    lm = prepare_model(model_name, args.lm_dtype, str(accelerator.device))
    fingerprint = lm_fingerprint(lm)
    check_resume_fingerprint(config.output_dir, config.resume, fingerprint)
    settings = FeatureSettings(kinds=("per_tok",), storage_dtype=args.cache_dtype,
                               window_overlap=args.window_overlap)
    cache_dir = args.cache_dir or cache_root() / "features"
    common = dict(fingerprint=fingerprint, lm_source=source_name(model_name), max_tokens=args.lm_max_tokens,
                  is_main_process=accelerator.is_main_process,
                  progress=accelerator.is_main_process and not args.quiet)
    train_features = cached_features(lm, [r.sequence for r in train_records], cache_dir, settings,
                                     description="train features", **common)
    valid_features = cached_features(lm, [r.sequence for r in valid_records], cache_dir, settings,
                                     description="valid features", **common)
    input_dim = lm.embed_dim
    del lm  # the head trains on the cached features only
    gc.collect()
    if args.cache_only:
        logger.info("features cached in %s and %s", train_features.path, valid_features.path)
        return {"train_cache": str(train_features.path), "valid_cache": str(valid_features.path)}

    set_seed(config.seed)  # the same initial head on every process
    if args.init_head:
        from ..pretrained import load_pretrained_as

        head = load_pretrained_as(args.init_head, RotaFormer, "a structure head")
        if head.config.input_dim != input_dim:
            raise ValueError(
                f"--init-head {args.init_head} is not a RotaFormer head taking {input_dim}-wide "
                "representations of this language model"
            )
        head = head.float().train()
    else:
        head = RotaFormer(head_config(args, input_dim))
    head.gradient_checkpointing = args.gradient_checkpointing
    parameters = sum(p.numel() for p in head.parameters())
    logger.info("head: %s parameters, %d blocks, input width %d; %d process(es)",
                f"{parameters:,}", head.config.num_blocks, input_dim, world)

    sampler = LengthBucketBatches(
        [len(r) for r in train_records], max_items=args.batch_size, max_cost=args.max_pairs,
        cost=pair_cost, seed=config.seed, rank=rank, world_size=world,
    )
    batches = MappedBatches(sampler, functools.partial(collate_structures, train_features, train_records))
    validation = StructureValidation(accelerator, valid_records, valid_features, grid,
                                     batch_size=args.batch_size, max_pairs=args.max_pairs,
                                     pos_weight=args.pos_weight, protocol=args.protocol)
    run_info = {
        "command": "train-ss",
        "protrna_version": __version__,
        "model": source_name(model_name),
        "lm_fingerprint": fingerprint,
        "lm_dtype": args.lm_dtype,
        "train": str(args.train),
        "valid": str(args.valid),
        "train_records": len(train_records),
        "valid_records": len(valid_records),
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "max_pairs": args.max_pairs,
        "pos_weight": args.pos_weight,
        "head": dataclasses.asdict(head.config),
        "head_parameters": parameters,
        "init_head": args.init_head,
        "gradient_checkpointing": args.gradient_checkpointing,
        "threshold_grid": grid,
        "threshold_protocol": args.protocol,
        "cache": {"train": str(train_features.path), "valid": str(valid_features.path),
                  "dtype": args.cache_dtype},
        "processes": world,
    }

    def save_final(accelerator: Accelerator, model: nn.Module, directory: Path) -> None:
        chosen = validation.final(model)
        facts = {
            "model": source_name(model_name),
            "lm_fingerprint": fingerprint,
            "threshold": chosen["result"]["valid_threshold"],
            "selected_on": str(args.valid),
            "selection": f"maximum mean per-sequence {get_protocol(args.protocol).f1} of p > t, "
                         f"protocol {args.protocol} (protrna.metrics)",
            "protocol": args.protocol,
            "valid_mean_f1_by_threshold": chosen["mean_f1_by_threshold"],
            "valid_loss": chosen["result"]["valid_loss"],
            "valid_f1": chosen["result"]["valid_f1"],
            "steps": config.max_steps,
            "protrna_version": __version__,
        }
        save_head(accelerator, model, directory, chosen["result"]["valid_threshold"], facts)

    try:
        return train(
            config, accelerator, head, batches,
            functools.partial(structure_loss, pos_weight=args.pos_weight),
            evaluate=validation, save_final=save_final, run_info=run_info, description="train-ss",
            progress=not args.quiet,
        )
    finally:
        train_features.close()
        valid_features.close()


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-ss",
        help="train the RotaFormer structure head on a frozen language model",
        description=(
            "Train a RotaFormer secondary-structure head on the cached last-layer "
            "representations of a frozen language model, choose its decision threshold on the "
            "validation set, and write DIR/final for protrna fold / evaluate --head. "
            "See docs/training.md."
        ),
    )
    add_options(parser, "model")
    parser.add_argument("--train", required=True, type=Path,
                        help="training structures: 3-line .dbn, PDB .tsv, .bpseq/.ct or a folder of them")
    parser.add_argument("--valid", required=True, type=Path,
                        help="validation structures: loss, F1 and the threshold choice")
    parser.add_argument("--max-length", type=at_least(1), default=None, metavar="NT",
                        help="skip (and count) RNAs longer than this, in both sets (default: keep all)")
    add_options(parser, "invalid", "quiet")
    data = parser.add_argument_group("batches and loss")
    data.add_argument("--batch-size", type=at_least(1), default=8, help="RNAs per micro-batch at most (default %(default)s)")
    data.add_argument("--max-pairs", type=at_least(1), default=DEFAULT_MAX_PAIRS,
                      help="B x L_max^2 pair cells per micro-batch at most; a longer RNA goes alone "
                      "(default %(default)s)")
    data.add_argument("--pos-weight", type=positive, default=1.0,
                      help="loss weight of paired cells relative to unpaired (default %(default)s)")
    data.add_argument("--threshold-grid", type=float, nargs=3, default=DEFAULT_GRID,
                      metavar=("START", "STOP", "STEP"),
                      help="thresholds tried on --valid (default 0.10 0.40 0.01, the original's)")
    data.add_argument("--protocol", choices=sorted(PROTOCOLS), default="protrna",
                      help="whose F1 picks the threshold: protrna (test_downstream_ss.py, default) or rnabench "
                      "(RnaBench 0.1.2, references without pairs left out)")
    head = parser.add_argument_group("head shape (defaults: the released ssHead_RF_bprna)")
    defaults = RotaFormerConfig()
    for flag, name in (("--num-blocks", "num_blocks"), ("--single-dim", "single_dim"), ("--pair-dim", "pair_dim"),
                       ("--msa-heads", "msa_heads"), ("--pair-heads", "pair_heads"),
                       ("--head-width", "head_width"), ("--outer-dim", "outer_dim"),
                       ("--transition-factor", "transition_factor")):
        head.add_argument(flag, type=at_least(1), default=getattr(defaults, name), help="default %(default)s")
    head.add_argument("--init-head", default=None,
                      help="start from this head (official name, .h5 or directory) instead of a random one")
    head.add_argument("--gradient-checkpointing", action="store_true",
                      help="recompute each block in the backward pass: far less memory, ~1/3 more time")
    cache = parser.add_argument_group("language-model feature cache")
    cache.add_argument("--cache-dir", type=Path, default=None,
                       help="where cached representations live (default: <PROTRNA_HOME or ~/.cache/protrna>/features)")
    cache.add_argument("--cache-dtype", choices=STORAGE_DTYPES, default="float32",
                       help="storage precision of the cache (default %(default)s; float16/bfloat16 halve the disk)")
    add_options(cache, "lm-dtype", "lm-max-tokens")
    cache.add_argument("--window-overlap", type=at_least(0), default=DEFAULT_OVERLAP,
                       help="overlap of the 510-nt windows covering longer RNAs (default %(default)s)")
    cache.add_argument("--cache-only", action="store_true",
                       help="compute the cached features and stop (e.g. once, before a multi-GPU run)")
    add_training_arguments(parser, lr=1e-3, warmup_steps=200, max_steps=20_000, eval_every=500, save_every=500)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    train_ss(args)
    return 0
