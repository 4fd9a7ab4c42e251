"""``protrna finetune``: task heads on the language model, and predictions with them.

Three tasks (:mod:`protrna.heads.task`): ``classification`` and ``regression`` of whole RNAs (the
head reads the mean over nucleotides or the BOS vector) and ``token-classification`` (one class
per nucleotide). Inputs are FASTA (label in the header) or CSV/TSV (:mod:`protrna.data.labelled`).

What trains (one of):

* nothing of the language model (default): its last-layer features are computed once into the
  feature cache (:mod:`protrna.train.features`) and the head trains on them, so epochs cost only
  the head;
* ``--trainable-layers K``: the top K blocks and the final LayerNorm train with the head (no
  cache: the model runs every step; RNAs longer than 510 nt are cut to their first 510);
* ``--lora-rank R``: LoRA adapters (``peft``) on the attention projections (query, key, value,
  output) of every block train with the head; the base weights stay frozen bit for bit.

Training runs in the shared loop (:mod:`protrna.train.loop`: checkpoints, exact resume, bf16,
several processes). ``--valid`` is scored every ``--eval-every`` steps; at the end ``DIR/final``
is written (:mod:`protrna.finetuned` describes it), the final model is scored on ``--valid`` and
``--test`` through the saved directory, and the predictions go to ``DIR/<set>_predictions.tsv``.

    protrna finetune --model ProtRNA_pretrained --task classification \\
        --train nRC_train.fasta --valid nRC_test.fasta --output runs/nrc
    protrna finetune --predict runs/nrc/final --input new.fasta --output new_predictions.tsv
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from torch import nn
from transformers import EsmForMaskedLM

from .. import __version__
from ..alphabet import MAX_RESIDUES, Alphabet, encode_rna
from ..data.batching import sorted_batches, token_cost
from ..data.buckets import LengthBucketBatches, MappedBatches
from ..data.labelled import FORMATS, TASKS, InputFormat, LabelledRecord, read_labelled
from ..data.masking import IGNORE_INDEX
from ..finetuned import (
    INFO_FILE,
    FinetunedModel,
    Prediction,
    decode_outputs,
    label_indices,
    load_finetuned,
    score_task,
    write_predictions,
)
from ..heads.task import POOLINGS, TaskHead, TaskHeadConfig, pool
from ..model import ProtRNA
from ..options import add_options, at_least, positive, token_count
from ..pretrained import source_name
from ..runtime import DEFAULT_MODEL, DEFAULT_OVERLAP, prepare_model
from ..runtime.paths import check_input_file, check_output_file, make_parent
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

#: Modules LoRA adapts: the attention projections of every transformers ESM block.
LORA_TARGETS = r".*\.attention\.(self\.(query|key|value)|output\.dense)"


# ---- the model when the language model trains -------------------------------------------------


class LanguageModelWithHead(nn.Module):
    """The ESM encoder of a ProtRNA model followed by a :class:`TaskHead`.

    ``forward(input_ids, attention_mask)`` reads the last layer (after the final LayerNorm, the
    representation frozen-LM training caches), pools it for sequence tasks, and returns the
    head's outputs: (B, K), or (B, L_max, K) for per-nucleotide tasks.
    """

    def __init__(self, lm: EsmForMaskedLM, head: TaskHead):
        super().__init__()
        self.lm = lm
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.lm.esm(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.head.config.per_token:
            return self.head(hidden[:, 1:-1])  # (B, T, D) => nucleotides (B, L_max, D)
        lengths = attention_mask.sum(dim=1) - 2  # BOS and EOS
        return self.head(pool(hidden, lengths, self.head.config.pooling))


def freeze_all_but_top(lm: EsmForMaskedLM, k: int) -> None:
    """Train only the top ``k`` blocks and the final LayerNorm that follows them."""
    blocks = lm.esm.encoder.layer
    if not 1 <= k <= len(blocks):
        raise ValueError(f"--trainable-layers {k}: the model has {len(blocks)} blocks")
    lm.requires_grad_(False)
    for block in blocks[len(blocks) - k :]:
        block.requires_grad_(True)
    lm.esm.encoder.emb_layer_norm_after.requires_grad_(True)


def add_lora(lm: EsmForMaskedLM, rank: int, alpha: float, dropout: float):
    """Inject LoRA adapters into the attention projections of ``lm`` (in place; every other
    weight frozen); returns the ``PeftModel`` that saves them."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS, bias="none")
    with warnings.catch_warnings():  # peft calls a transformers method deprecated in 5.x
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(lm, config)


# ---- batches ----------------------------------------------------------------------------------


def encode_labels(config: TaskHeadConfig, records: Sequence[LabelledRecord], width: int | None = None) -> torch.Tensor:
    """Training targets: class indices (B,), standardised values (B,), or per-nucleotide class
    indices (B, width) with ``-100`` beyond each RNA."""
    if config.task == "regression":
        values = [(r.label - config.target_mean) / config.target_std for r in records]
        return torch.tensor(values, dtype=torch.float32)
    indices = label_indices(config, records)
    if config.task == "classification":
        return torch.tensor(indices, dtype=torch.long)
    targets = torch.full((len(records), width), IGNORE_INDEX, dtype=torch.long)
    for row, classes in enumerate(indices):
        classes = classes[:width]
        targets[row, : len(classes)] = torch.tensor(classes, dtype=torch.long)
    return targets


def collate_features(features: FeatureCache, records: Sequence[LabelledRecord], config: TaskHeadConfig,
                     indices: list[int]) -> dict:
    """A batch of cached features (frozen language model)."""
    chosen = [records[i] for i in indices]
    lengths = [len(r) for r in chosen]
    if config.per_token:
        width = max(lengths)
        inputs = torch.zeros(len(indices), width, features.dim)
        for row, index in enumerate(indices):
            inputs[row, : lengths[row]] = features.per_token(index)
        labels = encode_labels(config, chosen, width)
    else:
        inputs = features.pooled(config.pooling)[torch.tensor(indices)]
        labels = encode_labels(config, chosen)
    return {
        "features": inputs,
        "labels": labels,
        "n_items": sum(lengths) if config.per_token else len(indices),
        "n_tokens": sum(lengths),
    }


def collate_tokens(records: Sequence[LabelledRecord], config: TaskHeadConfig, indices: list[int]) -> dict:
    """A batch of token ids (trainable language model); RNAs cut to their first 510 nt."""
    chosen = [records[i] for i in indices]
    ids = [encode_rna(r.sequence)[:MAX_RESIDUES] for r in chosen]
    alphabet = Alphabet()
    tokens = alphabet.pad_batch(ids)
    lengths = [len(x) for x in ids]
    labels = encode_labels(config, chosen, max(lengths)) if config.per_token else encode_labels(config, chosen)
    return {
        "input_ids": tokens,
        "attention_mask": tokens.ne(alphabet.padding_idx).long(),
        "labels": labels,
        "n_items": sum(lengths) if config.per_token else len(indices),
        "n_tokens": sum(lengths),
    }


def head_outputs(model: nn.Module, batch: dict) -> torch.Tensor:
    if "input_ids" in batch:
        return model(batch["input_ids"], batch["attention_mask"]).float()
    return model(batch["features"]).float()


def summed_loss(outputs: torch.Tensor, labels: torch.Tensor, task: str) -> torch.Tensor:
    """Cross-entropy per RNA or per nucleotide (padding ignored), squared error per RNA; summed."""
    if task == "regression":
        return F.mse_loss(outputs.squeeze(-1), labels, reduction="sum")
    return F.cross_entropy(outputs.flatten(0, -2), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


def task_loss(model: nn.Module, batch: dict, task: str) -> torch.Tensor:
    """Summed loss of a batch (the training loop divides by the step's items)."""
    return summed_loss(head_outputs(model, batch), batch["labels"], task)


class TaskValidation:
    """Loss and task metrics on a labelled set during training, split over processes (every
    process runs the same number of forwards, as :func:`~protrna.train.loop.evaluate_loss`)."""

    def __init__(self, accelerator: Accelerator, records: Sequence[LabelledRecord], config: TaskHeadConfig,
                 collate, batches: list[list[int]]):
        self.accelerator, self.records, self.config = accelerator, records, config
        self.collate, self.batches = collate, batches

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> dict:
        accelerator = self.accelerator
        rank, world = accelerator.process_index, accelerator.num_processes
        loss, items, mine = 0.0, 0, []
        for round_ in range(-(-len(self.batches) // world)):
            index = round_ * world + rank
            indices = self.batches[min(index, len(self.batches) - 1)]
            batch = to_device(self.collate(indices), accelerator.device)
            outputs = head_outputs(model, batch)
            if index >= len(self.batches):
                continue  # a repeated batch, only to keep the processes in step
            loss += summed_loss(outputs, batch["labels"], self.config.task).item()
            items += batch["n_items"]
            for row, record_index in enumerate(indices):
                record = self.records[record_index]
                length = min(len(record), outputs.shape[1]) if self.config.per_token else len(record)
                row_outputs = outputs[row, :length] if self.config.per_token else outputs[row]
                prediction, _ = decode_outputs(self.config, row_outputs.cpu())
                mine.append((record_index, Prediction(record.index, record.id, len(record), prediction)))
        totals = accelerator.reduce(torch.tensor([loss, items], dtype=torch.float64, device=accelerator.device),
                                    reduction="sum")
        gathered = sorted(gather_object(mine) if world > 1 else mine, key=lambda item: item[0])
        records = [self.records[i] for i, _ in gathered]
        predictions = [p for _, p in gathered]
        if self.config.per_token:  # RNAs cut to 510 nt in the batches are scored on what was seen
            records = [_cut_labels(r, len(p.prediction)) for r, p in zip(records, predictions)]
        metrics = score_task(self.config, records, predictions)
        result = {"valid_loss": (totals[0] / totals[1]).item()}
        keys = ("mse", "r2", "spearman") if self.config.task == "regression" else ("accuracy", "macro_f1")
        result.update({f"valid_{k}": metrics[k] for k in keys})
        return result


def _cut_labels(record: LabelledRecord, length: int) -> LabelledRecord:
    if len(record.label) == length:
        return record
    return dataclasses.replace(record, sequence=record.sequence[:length], label=record.label[:length])


# ---- the command ------------------------------------------------------------------------------


def _input_format(args: argparse.Namespace, saved: dict | None = None) -> InputFormat:
    """Column and label options: flags given now win, then the ones saved with the model."""
    values = dict(saved or {})
    for field, flag in (("file_format", "format"), ("sequence_column", "sequence_column"),
                        ("label_column", "label_column"), ("id_column", "id_column"),
                        ("label_regex", "label_regex"), ("label_separator", "label_separator")):
        given = getattr(args, flag)
        if given is not None:
            values[field] = given
    return InputFormat(**values)


def _class_labels(task: str, train_records: Sequence[LabelledRecord]) -> list[str]:
    if task == "regression":
        return []
    if task == "classification":
        found = {r.label for r in train_records}
    else:
        found = {label for r in train_records for label in r.label}
    if len(found) < 2:
        raise ValueError(f"the training set has {len(found)} class(es) ({sorted(found)}); a classifier needs 2+")
    return sorted(found)


def finetune(args: argparse.Namespace) -> dict:
    """Run ``protrna finetune`` with parsed arguments (training, or ``--predict``)."""
    if args.predict is not None:
        return predict_file(args)
    if args.train is None or args.task is None:
        raise ValueError("--train and --task are needed to train (or --predict DIR/final --input FILE to predict)")
    config = TrainConfig.from_args(args)
    check_run_dir(config)
    accelerator = make_accelerator(config)
    rank, world = accelerator.process_index, accelerator.num_processes
    task = args.task
    input_format = _input_format(args)
    model_source = source_name(args.model or DEFAULT_MODEL)
    mode = "lora" if args.lora_rank else "top-k" if args.trainable_layers else "frozen"

    read = functools.partial(read_labelled, task=task, input_format=input_format, skip_invalid=args.invalid == "skip")
    train_records = read(args.train)
    if args.max_length is not None:
        kept = [r for r in train_records if len(r) <= args.max_length]
        logger.info("train: %d records longer than --max-length %d skipped", len(train_records) - len(kept),
                    args.max_length)
        train_records = kept
        if not train_records:
            raise ValueError(f"{args.train}: no record within --max-length {args.max_length}")
    sets = {"valid": read(args.valid) if args.valid else None, "test": read(args.test) if args.test else None}
    labels = _class_labels(task, train_records)
    target_mean, target_std = 0.0, 1.0
    if task == "regression":
        values = np.array([r.label for r in train_records])
        target_mean, target_std = float(values.mean()), float(values.std()) or 1.0

    set_seed(config.seed)
    if mode == "frozen":
        lm = prepare_model(model_source, args.lm_dtype, str(accelerator.device))
    else:
        lm = prepare_model(model_source, "float32", "cpu")
    fingerprint = lm_fingerprint(lm)
    head_config = TaskHeadConfig(task, input_dim=lm.embed_dim, labels=labels, hidden_dim=args.hidden_dim,
                                 dropout=args.dropout, pooling=args.pooling, target_mean=target_mean,
                                 target_std=target_std)
    for name, records in sets.items():
        if records is not None and task != "regression":
            label_indices(head_config, records)  # unknown classes: an error naming the record now

    caches: dict[str, FeatureCache] = {}
    peft_model = None
    if mode == "frozen":
        check_resume_fingerprint(config.output_dir, config.resume, fingerprint)
        kinds = ("per_tok",) if head_config.per_token else ("mean", "bos")
        settings = FeatureSettings(kinds=kinds, storage_dtype=args.cache_dtype, window_overlap=args.window_overlap)
        cache_dir = args.cache_dir or cache_root() / "features"
        for name, records in {"train": train_records, **sets}.items():
            if records is not None:
                caches[name] = cached_features(
                    lm, [r.sequence for r in records], cache_dir, settings, fingerprint=fingerprint,
                    lm_source=str(model_source), max_tokens=args.lm_max_tokens,
                    is_main_process=accelerator.is_main_process,
                    progress=accelerator.is_main_process and not args.quiet,
                    description=f"{name} features",
                )
        del lm
        gc.collect()
        model = TaskHead(head_config)

        def collate_for(name, records):
            return functools.partial(collate_features, caches[name], records, head_config)
    else:
        esm = lm.lm.float()
        esm.train()
        if mode == "top-k":
            freeze_all_but_top(esm, args.trainable_layers)
        else:
            peft_model = add_lora(esm, args.lora_rank, args.lora_alpha or 2 * args.lora_rank, args.lora_dropout)
        model = LanguageModelWithHead(esm, TaskHead(head_config))
        cut = sum(len(r) > MAX_RESIDUES for r in train_records)
        if cut:
            logger.info("train: %d RNAs longer than %d nt are cut to their first %d", cut, MAX_RESIDUES, MAX_RESIDUES)

        def collate_for(name, records):
            return functools.partial(collate_tokens, records, head_config)

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    per_token_costs = head_config.per_token or mode != "frozen"
    sampler = LengthBucketBatches(
        [len(r) for r in train_records], max_items=args.batch_size,
        max_cost=args.max_tokens if per_token_costs else None, cost=token_cost, seed=config.seed,
        rank=rank, world_size=world, pool=None if per_token_costs else 0,
    )
    logger.info(
        "finetune %s (%s LM): %s of %s parameters trainable; %d training RNAs, about %d steps per epoch; "
        "%d process(es)", task, mode, f"{trainable:,}", f"{total:,}", len(train_records),
        max(1, len(sampler) // config.grad_accum), world,
    )
    batches = MappedBatches(sampler, collate_for("train", train_records))

    evaluate = None
    if sets["valid"] is not None:
        valid = sets["valid"]
        valid_batches = sorted_batches([len(r) for r in valid], max_items=args.batch_size,
                                      max_cost=args.max_tokens if per_token_costs else None, cost=token_cost)
        evaluate = TaskValidation(accelerator, valid, head_config, collate_for("valid", valid), valid_batches)

    run_info = {
        "command": "finetune",
        "protrna_version": __version__,
        "task": task,
        "model": str(model_source),
        "lm_mode": mode,
        "lm_fingerprint": fingerprint,
        "trainable_layers": args.trainable_layers,
        "lora": {"rank": args.lora_rank, "alpha": args.lora_alpha or 2 * (args.lora_rank or 0),
                 "dropout": args.lora_dropout, "targets": LORA_TARGETS} if mode == "lora" else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "head": {k: v for k, v in head_config.__dict__.items()},
        "input_format": input_format.__dict__,
        "train": str(args.train),
        "valid": str(args.valid) if args.valid else None,
        "test": str(args.test) if args.test else None,
        "train_records": len(train_records),
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "max_tokens": args.max_tokens,
        "cache": {name: str(c.path) for name, c in caches.items()},
        "processes": world,
    }

    def save_final(accelerator: Accelerator, model: nn.Module, directory: Path) -> None:
        state = accelerator.get_state_dict(model)
        if not accelerator.is_main_process:
            return
        info = {
            "task": task,
            "lm_mode": mode,
            "lm_source": str(model_source),
            "lm_fingerprint": fingerprint,
            "lm_dtype": args.lm_dtype if mode == "frozen" else "float32",
            "window_overlap": args.window_overlap,
            "input_format": input_format.__dict__,
            "trained_on": str(args.train),
            "steps": config.max_steps,
            "protrna_version": __version__,
        }
        esm_config = accelerator.unwrap_model(model).lm.config if mode == "top-k" else None
        save_finetuned(directory, state, mode, head_config, info, esm_config=esm_config, peft_model=peft_model)
        results = final_evaluation(directory, sets, caches, head_config, config.output_dir)
        if results:
            info["metrics"] = results
            (directory / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
            (config.output_dir / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")

    try:
        return train(config, accelerator, model, batches, functools.partial(task_loss, task=task),
                     evaluate=evaluate, save_final=save_final, run_info=run_info, description="finetune",
                     progress=not args.quiet)
    finally:
        for cache in caches.values():
            cache.close()


def save_finetuned(directory: Path, state: dict, mode: str, head_config: TaskHeadConfig, info: dict, *,
                   esm_config=None, peft_model=None) -> None:
    """Write ``DIR/final`` (head, finetune.json, and ``lm/`` or ``lora/``), atomically.

    ``state`` is the trained module's full state dict: the head's alone (frozen mode) or
    ``lm.*`` and ``head.*`` (:class:`LanguageModelWithHead`).
    """
    temporary = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    head = TaskHead(head_config)
    if mode == "frozen":
        head.load_state_dict(state)
    else:
        head.load_state_dict({k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")})
    head.save_pretrained(temporary)
    if mode == "top-k":
        esm = EsmForMaskedLM(esm_config)
        esm.load_state_dict({k.removeprefix("lm."): v for k, v in state.items() if k.startswith("lm.")})
        ProtRNA(lm=esm).save_pretrained(temporary / "lm")
    elif mode == "lora":
        peft_model.save_pretrained(str(temporary / "lora"))
    (temporary / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    if directory.exists():
        shutil.rmtree(directory)
    temporary.rename(directory)
    logger.info("final model written to %s", directory)


def final_evaluation(directory: Path, sets: dict, caches: dict, head_config: TaskHeadConfig,
                     output_dir: Path) -> dict:
    """Score the saved model on the valid and test sets; write ``<set>_predictions.tsv``.

    A frozen-LM model reads the cached features (what ``predict`` would compute again); the
    others are loaded back from ``directory`` and run through ``predict``.
    """
    results = {}
    runner = None
    for name in ("valid", "test"):
        records = sets.get(name)
        if records is None:
            continue
        if name in caches:
            runner = runner or FinetunedModel(None, TaskHead.from_pretrained(directory))
            cache = caches[name]
            pooled = None if head_config.per_token else cache.pooled(head_config.pooling)
            predictions = [
                runner.head_prediction(r.index, r.id, cache.per_token(i) if pooled is None else pooled[i], len(r))
                for i, r in enumerate(records)
            ]
        else:
            runner = runner or load_finetuned(directory)
            predictions = runner.predict([(r.id, r.sequence) for r in records])
        for record, prediction in zip(records, predictions):
            prediction.index = record.index
        metrics = score_task(head_config, records, predictions)
        write_predictions(output_dir / f"{name}_predictions.tsv", head_config, predictions, records)
        results[name] = metrics
        print(f"{name}: {_metrics_line(metrics)}", flush=True)
    return results


def _metrics_line(metrics: dict) -> str:
    keys = [k for k in ("accuracy", "macro_f1", "mse", "r2", "spearman", "pearson") if k in metrics]
    return "  ".join(f"{k} {metrics[k]:.4f}" for k in keys) + f"  (n = {metrics['n']})"


def predict_file(args: argparse.Namespace) -> dict:
    """``protrna finetune --predict DIR/final --input FILE --output OUT.tsv``: predictions, and
    metrics when the input has usable labels."""
    if args.input is None:
        raise ValueError("--predict needs --input FILE (FASTA, CSV or TSV)")
    check_input_file(args.input, "--input", "a FASTA, CSV or TSV file")
    for flag, written in (("--output", args.output), ("--summary", args.summary)):
        if written is not None and Path(written).exists() and Path(written).resolve() == Path(args.input).resolve():
            raise ValueError(f"{written} is the input file; choose another output")
        if written is not None:
            check_output_file(written, flag, example="predictions.tsv" if flag == "--output" else "summary.json")
    model = load_finetuned(args.predict, args.model, device=args.device, max_tokens=args.lm_max_tokens)
    config = model.config
    input_format = _input_format(args, model.info.get("input_format"))
    records = read_labelled(args.input, config.task, input_format, labels_required=False,
                            skip_invalid=args.invalid == "skip")
    predictions = model.predict([(r.id, r.sequence) for r in records], progress=not args.quiet)
    for record, prediction in zip(records, predictions):
        prediction.index = record.index
    write_predictions(make_parent(args.output), config, predictions, records)
    logger.info("wrote %d predictions to %s", len(predictions), args.output)
    metrics = {}
    if all(r.label is not None for r in records):
        try:
            metrics = score_task(config, records, predictions)
        except ValueError as error:
            logger.warning("predictions not scored: %s", error)
        else:
            print(f"{args.input}: {_metrics_line(metrics)}", flush=True)
    if args.summary is not None:
        summary = {"model": str(args.predict), "input": str(args.input), "n": len(records), "metrics": metrics}
        make_parent(args.summary).write_text(json.dumps(summary, indent=2) + "\n")
    return metrics


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="train a task head (classification, regression, per-nucleotide) on the language model, or predict with one",
        description=(
            "Fine-tune a task head on the language model: the LM frozen (default, features cached), "
            "its top K blocks trained, or LoRA adapters. With --predict DIR/final, predict instead. "
            "See docs/training.md."
        ),
        epilog="examples:\n"
        "  protrna finetune --task classification --train nRC_train.fasta --valid nRC_test.fasta --output runs/nrc\n"
        "  protrna finetune --predict runs/nrc/final --input new.fasta --output predictions.tsv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, "model")
    parser.add_argument("--task", choices=TASKS, help="what to learn (needed to train)")
    parser.add_argument("--train", type=Path, metavar="FILE", help="labelled training RNAs: FASTA, CSV or TSV")
    parser.add_argument("--valid", type=Path, metavar="FILE", help="labelled RNAs scored during and after training")
    parser.add_argument("--test", type=Path, metavar="FILE", help="labelled RNAs scored once, after training")
    parser.add_argument("--max-length", type=at_least(1), default=None, metavar="NT",
                        help="skip training RNAs longer than this (valid/test are never filtered)")
    add_options(parser, "invalid", "quiet")
    reading = parser.add_argument_group("reading labelled files")
    reading.add_argument("--format", choices=FORMATS, default=None, help="input format (default: from the suffix)")
    reading.add_argument("--sequence-column", default=None, help="CSV/TSV column of the sequence (default: sequence)")
    reading.add_argument("--label-column", default=None, help="CSV/TSV column of the label (default: label)")
    reading.add_argument("--id-column", default=None, help="CSV/TSV column of the record id (default: the row number)")
    reading.add_argument("--label-regex", default=None,
                         help="FASTA: the label is this regular expression's first group (or match) in the header "
                         "line (default: the header's first word)")
    reading.add_argument("--label-separator", default=None,
                         help="per-nucleotide labels: separator of the label list (default: one character per "
                         "nucleotide, or whitespace/commas/semicolons)")
    head = parser.add_argument_group("head")
    head.add_argument("--pooling", choices=POOLINGS, default="mean",
                      help="sequence tasks: mean over nucleotides or the BOS vector (default %(default)s)")
    head.add_argument("--hidden-dim", type=at_least(0), default=256, help="hidden width, 0 = linear head (default %(default)s)")
    head.add_argument("--dropout", type=at_least(0.0, float), default=0.1, help="default %(default)s")
    lm = parser.add_argument_group("language model (default: frozen, features cached)")
    which = lm.add_mutually_exclusive_group()
    which.add_argument("--trainable-layers", type=at_least(0), default=0, metavar="K",
                       help="train the top K blocks (and the final LayerNorm) with the head")
    which.add_argument("--lora-rank", type=at_least(0), default=0, metavar="R",
                       help="train LoRA adapters of rank R on the attention projections (query, key, value, output)")
    lm.add_argument("--lora-alpha", type=positive, default=None, help="LoRA scale numerator (default: 2 x rank)")
    lm.add_argument("--lora-dropout", type=at_least(0.0, float), default=0.05, help="default %(default)s")
    batches = parser.add_argument_group("batches")
    batches.add_argument("--batch-size", type=at_least(1), default=32, help="RNAs per micro-batch at most (default %(default)s)")
    batches.add_argument("--max-tokens", type=token_count, default=8192, metavar="N",
                         help="nucleotides (padding included) per micro-batch at most, when whole sequences go "
                         "in (trainable LM, per-nucleotide task) (default %(default)s)")
    cache = parser.add_argument_group("frozen language model: feature cache")
    cache.add_argument("--cache-dir", type=Path, default=None,
                       help="where cached representations live (default: <PROTRNA_HOME or ~/.cache/protrna>/features)")
    cache.add_argument("--cache-dtype", choices=STORAGE_DTYPES, default="float32", help="default %(default)s")
    add_options(cache, "lm-dtype", "lm-max-tokens")
    cache.add_argument("--window-overlap", type=at_least(0), default=DEFAULT_OVERLAP,
                       help="overlap of the 510-nt windows covering longer RNAs (default %(default)s)")
    predicting = parser.add_argument_group("predicting")
    predicting.add_argument("--predict", type=Path, default=None, metavar="FINAL",
                            help="predict with this DIR/final instead of training; --output is then the TSV, and "
                            "the language model is the one FINAL records unless --model names another")
    predicting.add_argument("--input", type=Path, default=None, help="with --predict: the RNAs to predict")
    predicting.add_argument("--summary", type=Path, default=None, help="with --predict: metrics JSON (labelled input)")
    add_options(predicting, "device")
    add_training_arguments(parser, lr=1e-3, warmup_steps=100, max_steps=2000, eval_every=200, save_every=500)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    finetune(args)
    return 0
