"""``protrna pretrain``: cross-modality transfer of ESM-2 to RNA by masked-LM training.

The recipe of the paper (section 6 of docs/REFERENCE.md), as one function, :func:`pretrain`:
start from ESM-2, grow the vocabulary by ``a u g c x`` (:mod:`protrna.train.transfer`), freeze
all but the top ``--trainable-layers`` blocks, and train by masked LM on RNA streamed from FASTA
(:mod:`protrna.data.batching`) with the shared loop (:mod:`protrna.train.loop`). The result,
``DIR/final``, is a ProtRNA directory that ``ProtRNA.from_pretrained`` and plain
``EsmForMaskedLM.from_pretrained`` load.

Single process::

    protrna pretrain --esm facebook/esm2_t33_650M_UR50D --train rnacentral.fa --output runs/x

Several GPUs (DDP)::

    torchrun --nproc_per_node 8 -m protrna.cli pretrain --esm ... --train ... --output runs/x
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from transformers import EsmForMaskedLM

from .. import __version__
from ..data.batching import MLMBatches
from ..data.masking import IGNORE_INDEX
from ..data.streaming import INVALID_POLICIES, FastaStream
from ..model import ProtRNA
from ..options import add_invalid_option, add_options, at_least, token_count
from .loop import TrainConfig, add_training_arguments, check_run_dir, evaluate_loss, make_accelerator, train
from .transfer import (
    DEFAULT_TRAINABLE_LAYERS,
    count_parameters,
    freeze_for_transfer,
    load_source,
    merged_state_dict,
)

logger = logging.getLogger(__name__)

#: Default token budget per micro-batch and process, padding included: 16 full 512-token windows.
DEFAULT_MAX_TOKENS = 8192


def mlm_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Sum of the cross-entropies at the masked positions of ``batch`` (the loop averages)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(
        logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def save_protrna(accelerator: Accelerator, model: nn.Module, directory: Path) -> None:
    """Write the trained model as a ProtRNA directory (atomically: temp directory + rename)."""
    state = accelerator.get_state_dict(model)  # full weights on process 0, gathered under FSDP
    if accelerator.is_main_process:
        lm = EsmForMaskedLM(accelerator.unwrap_model(model).config)
        lm.load_state_dict(merged_state_dict(state), strict=True)
        temporary = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(temporary, ignore_errors=True)
        ProtRNA(lm=lm).save_pretrained(temporary)
        if directory.exists():
            shutil.rmtree(directory)
        temporary.rename(directory)
        logger.info("final model written to %s", directory)


def _data_seed(seed: int, rank: int, purpose: int) -> int:
    """Independent 63-bit seeds per (run seed, process, purpose)."""
    return int(np.random.SeedSequence([seed, rank, purpose]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def pretrain(args: argparse.Namespace) -> dict:
    """Run ``protrna pretrain`` with parsed arguments; returns the last log record."""
    config = TrainConfig.from_args(args)
    check_run_dir(config)
    accelerator = make_accelerator(config)
    rank, world = accelerator.process_index, accelerator.num_processes
    max_tokens = DEFAULT_MAX_TOKENS if args.max_tokens is None and args.batch_size is None else args.max_tokens

    set_seed(config.seed)
    lm = load_source(args.esm, trust_checkpoint=args.trust_checkpoint)
    freeze_for_transfer(lm, args.trainable_layers)
    trainable, total = count_parameters(lm)
    logger.info(
        "training %s of %s parameters (%.1f %%): top %d of %d blocks, RNA token rows, final "
        "LayerNorm, LM head; %d process(es)",
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
        args.trainable_layers,
        lm.config.num_hidden_layers,
        world,
    )

    sequences = FastaStream(
        args.train,
        rank=rank,
        world_size=world,
        shuffle_buffer=args.shuffle_buffer,
        seed=config.seed,
        loop=True,
        invalid=args.invalid,
    )
    batches = MLMBatches(
        sequences,
        max_tokens=max_tokens,
        batch_size=args.batch_size,
        seed=_data_seed(config.seed, rank, 1),
        mask_prob=args.mask_prob,
    )

    evaluate = None
    if args.valid:
        # The same masked batches on every process and at every evaluation, so valid_loss values
        # are comparable along the run.
        valid = MLMBatches(
            FastaStream(args.valid, loop=False, invalid=args.invalid, seed=config.seed),
            max_tokens=max_tokens,
            batch_size=args.batch_size,
            seed=_data_seed(config.seed, 0, 2),
            mask_prob=args.mask_prob,
        )
        valid_batches = list(valid)
        logger.info(
            "validation: %d sequences in %d batches",
            sum(len(b["input_ids"]) for b in valid_batches),
            len(valid_batches),
        )

        def evaluate(model: nn.Module) -> dict:
            loss = evaluate_loss(accelerator, model, valid_batches, mlm_loss)
            return {"valid_loss": loss, "valid_ppl": math.exp(min(loss, 50.0))}

    run_info = {
        "command": "pretrain",
        "protrna_version": __version__,
        "esm": str(args.esm),
        "train": [str(p) for p in args.train],
        "valid": [str(p) for p in args.valid or []],
        "trainable_layers": args.trainable_layers,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "max_tokens": max_tokens,
        "batch_size": args.batch_size,
        "shuffle_buffer": args.shuffle_buffer,
        "invalid": args.invalid,
        "mask_prob": args.mask_prob,
        "processes": world,
    }
    return train(
        config,
        accelerator,
        lm,
        batches,
        mlm_loss,
        evaluate=evaluate,
        save_final=save_protrna,
        run_info=run_info,
        description="pretrain",
        progress=not args.quiet,
    )


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="transfer ESM-2 to RNA by masked-LM training (the ProtRNA recipe)",
        description=(
            "Grow ESM-2's vocabulary by the RNA tokens a u g c x, freeze all but the top blocks, "
            "and train by masked LM on RNA FASTA files. Runs on one CPU or GPU as it is, on "
            "several GPUs under torchrun or accelerate launch. See docs/training.md."
        ),
    )
    parser.add_argument(
        "--esm",
        required=True,
        metavar="SOURCE",
        help="ESM-2 to start from: Hugging Face id (facebook/esm2_t33_650M_UR50D), local "
        "Hugging Face directory, or fair-esm .pt checkpoint; a ProtRNA directory trains further",
    )
    parser.add_argument(
        "--train", required=True, nargs="+", type=Path, metavar="FASTA", help="training FASTA files (.gz too)"
    )
    parser.add_argument(
        "--valid",
        nargs="+",
        type=Path,
        metavar="FASTA",
        help="held-out FASTA: valid_loss / valid_ppl every --eval-every steps",
    )
    parser.add_argument(
        "--trainable-layers",
        type=at_least(0),
        default=DEFAULT_TRAINABLE_LAYERS,
        metavar="K",
        help="top blocks to train (default %(default)s: 80.4 M of 651 M parameters for ESM-2 650M)",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--max-tokens",
        type=token_count,
        metavar="N",
        help=f"tokens per micro-batch and process, padding included (default {DEFAULT_MAX_TOKENS})",
    )
    size.add_argument(
        "--batch-size", type=at_least(1), metavar="B", help="sequences per micro-batch instead of a token budget"
    )
    parser.add_argument(
        "--shuffle-buffer",
        type=at_least(0),
        default=10_000,
        metavar="N",
        help="sequences held for shuffling, 0 = file order (default %(default)s)",
    )
    # Web-scale FASTA streams: a bad record is skipped by default, as the original's reader did.
    add_invalid_option(parser, INVALID_POLICIES, default="skip")
    add_options(parser, "quiet")
    parser.add_argument(
        "--mask-prob", type=float, default=0.15, help="share of nucleotides masked (default %(default)s)"
    )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow a fair-esm .pt that holds arbitrary Python objects (unpickled: trusted files only)",
    )
    add_training_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    pretrain(args)
    return 0
