"""The training loop shared by ``protrna pretrain``, ``train-ss`` and ``finetune``.

Everything a run does is in :func:`train`, top to bottom: build AdamW over the parameters that
require gradients, let ``accelerate`` wrap model and optimizer (DDP, FSDP, DeepSpeed, mixed
precision: whatever the launcher configured), resume if asked, then per step set the learning
rate, accumulate gradients over micro-batches, clip, step, log, evaluate, checkpoint. At the end
the task's ``save_final`` writes the artifact.

A command plugs in four things and nothing else:

* ``model``: an ``nn.Module`` whose trainable parameters are exactly those with
  ``requires_grad`` (freeze before calling).
* ``batches``: an endless iterable (loop over epochs) of dict batches of CPU tensors, each with
  ``n_items`` (the number of terms its loss sums: masked tokens, pair cells, sequences) and
  optionally ``n_tokens`` (for throughput). Each process gets its own share of the data. For
  exact resume it also has ``state_dict()`` / ``load_state_dict()``; without them a resumed run
  restarts its data from the beginning.
* ``loss_fn(model, batch) -> Tensor``: the *sum* of the per-item losses of one batch. The loop
  divides by the item count of the whole step (all micro-batches, all processes), so the
  gradient is that of the plain mean however batches are cut.
* ``evaluate(model) -> dict`` (optional, every ``eval_every`` steps) and
  ``save_final(accelerator, model, directory)`` (optional, at the end).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterable

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm

from ..runtime.resume import LineJournal, write_atomic
from .checkpoint import frozen_fingerprint, latest_checkpoint, load_checkpoint, save_checkpoint
from .schedule import warmup_cosine_lr

logger = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, dict], torch.Tensor]


@dataclasses.dataclass
class TrainConfig:
    """Settings every training command shares; ``add_training_arguments`` makes them flags.

    Args:
        output_dir: run directory: ``log.jsonl``, ``run.json``, ``checkpoints/``, ``final/``.
        max_steps: optimizer steps in the run (the cosine reaches ``min_lr`` there).
        lr: peak learning rate, reached after ``warmup_steps`` linear steps.
        min_lr: floor of the cosine; ``None`` means ``lr / 10``.
        warmup_steps: linear warmup length.
        weight_decay: AdamW decoupled decay on matrices (parameters with 2+ dimensions);
            biases and LayerNorm weights are not decayed.
        betas, eps: AdamW moments; (0.9, 0.98) as ESM-2 used.
        grad_accum: micro-batches per optimizer step (per process).
        clip_grad: max global gradient norm; 0 turns clipping off.
        bf16: bfloat16 autocast (weights and optimizer stay fp32), on CPU and GPU.
        seed: seeds python/numpy/torch, and each process's data stream.
        log_every: write ``log.jsonl`` every this many steps (and on eval steps).
        eval_every: run ``evaluate`` every this many steps and at the end.
        save_every: checkpoint every this many steps and at the end (0: only at the end).
        keep_checkpoints: newest checkpoints kept (0 keeps all).
        resume: continue from the newest checkpoint in ``output_dir`` (start fresh if none).
    """

    output_dir: Path
    max_steps: int = 100_000
    lr: float = 1e-4
    min_lr: float | None = None
    warmup_steps: int = 2_000
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    grad_accum: int = 1
    clip_grad: float = 1.0
    bf16: bool = False
    seed: int = 0
    log_every: int = 10
    eval_every: int = 1_000
    save_every: int = 1_000
    keep_checkpoints: int = 2
    resume: bool = False

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        self.betas = tuple(self.betas)
        if self.min_lr is None:
            self.min_lr = self.lr / 10
        for name in ("max_steps", "grad_accum", "log_every", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.save_every < 0 or self.keep_checkpoints < 0:
            raise ValueError("warmup_steps, save_every and keep_checkpoints must not be negative")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:  # a floor above the peak would make the cosine climb
            raise ValueError(f"--min-lr must lie in [0, --lr = {self.lr}], got {self.min_lr}")
        if not (self.weight_decay >= 0 and self.clip_grad >= 0 and self.eps > 0):
            raise ValueError(f"--weight-decay and --clip-grad must not be negative and --eps must be positive, "
                             f"got {self.weight_decay}, {self.clip_grad}, {self.eps}")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"--betas must lie in [0, 1), got {list(self.betas)}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in vars(args).items() if k in names}
        values["output_dir"] = args.output
        return cls(**values)

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["output_dir"] = str(self.output_dir)
        data["betas"] = list(self.betas)
        return data


def add_training_arguments(parser: argparse.ArgumentParser, **defaults) -> None:
    """Add the shared training flags to a sub-command's parser; ``defaults`` override
    :class:`TrainConfig`'s per command (e.g. ``lr=1e-3`` for a small head)."""
    base = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name != "output_dir"}
    base.update(defaults)
    group = parser.add_argument_group("training loop")
    group.add_argument("--output", required=True, type=Path, metavar="DIR", help="run directory")
    group.add_argument(
        "--max-steps", type=int, default=base["max_steps"], help="optimizer steps (default %(default)s)"
    )
    group.add_argument(
        "--lr", type=float, default=base["lr"], help="peak learning rate (default %(default)s)"
    )
    group.add_argument("--min-lr", type=float, default=base["min_lr"], help="cosine floor (default: lr / 10)")
    group.add_argument("--warmup-steps", type=int, default=base["warmup_steps"], help="default %(default)s")
    group.add_argument("--weight-decay", type=float, default=base["weight_decay"], help="default %(default)s")
    group.add_argument(
        "--betas",
        type=float,
        nargs=2,
        default=base["betas"],
        metavar=("B1", "B2"),
        help="AdamW betas (default %(default)s)",
    )
    group.add_argument("--eps", type=float, default=base["eps"], help="AdamW eps (default %(default)s)")
    group.add_argument(
        "--grad-accum",
        type=int,
        default=base["grad_accum"],
        help="micro-batches per step (default %(default)s)",
    )
    group.add_argument(
        "--clip-grad",
        type=float,
        default=base["clip_grad"],
        help="max gradient norm, 0 = off (default %(default)s)",
    )
    group.add_argument("--bf16", action="store_true", default=base["bf16"], help="bfloat16 autocast")
    group.add_argument("--seed", type=int, default=base["seed"], help="default %(default)s")
    group.add_argument("--log-every", type=int, default=base["log_every"], help="default %(default)s")
    group.add_argument("--eval-every", type=int, default=base["eval_every"], help="default %(default)s")
    group.add_argument(
        "--save-every",
        type=int,
        default=base["save_every"],
        help="checkpoint interval, 0 = at the end only (default %(default)s)",
    )
    group.add_argument(
        "--keep-checkpoints",
        type=int,
        default=base["keep_checkpoints"],
        help="0 keeps all (default %(default)s)",
    )
    group.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in DIR")


def make_accelerator(config: TrainConfig) -> Accelerator:
    """The run's ``Accelerator``. Distributed setup comes from the launcher (``torchrun`` or
    ``accelerate launch`` with its config); ``--bf16`` asks for bfloat16 autocast, otherwise the
    launcher's mixed-precision setting (if any) holds.

    On a machine without GPU, ``cpu=True`` is what makes accelerate read ``torchrun``'s
    environment as a multi-process CPU run (gloo); otherwise every process would train alone.
    Processes other than the main one log warnings only.
    """
    no_accelerator = not torch.accelerator.is_available()
    for engine_flag, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if no_accelerator and os.environ.get(engine_flag, "").lower() in ("1", "true", "yes"):
            # accelerate refuses to build these without GPUs; plain processes (DDP) still train.
            logger.warning("%s shards only on GPUs; on this CPU-only machine the run uses plain DDP", name)
            os.environ[engine_flag] = "false"
    accelerator = Accelerator(mixed_precision="bf16" if config.bf16 else None, cpu=no_accelerator)
    engine = accelerator.distributed_type.value
    if accelerator.is_fsdp2:
        engine += "2"
    if not accelerator.is_main_process:  # one process speaks for the run
        logging.getLogger("protrna").setLevel(logging.WARNING)
    # Which engine the launcher's settings actually gave.
    logger.info("engine: %s, %d process(es) on %s, mixed precision %s", engine, accelerator.num_processes,
                accelerator.device.type, accelerator.mixed_precision)
    return accelerator


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: matrices decayed, vectors (biases, norms) not."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter")
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)


def to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


@torch.no_grad()
def evaluate_loss(accelerator: Accelerator, model: nn.Module, batches: list[dict], loss_fn: LossFn) -> float:
    """Mean per-item loss over ``batches`` (the same list on every process), split across them.

    Every process runs the same number of forward passes (some repeat a batch with weight 0), so
    collective operations inside a wrapped model's forward always line up.
    """
    if not batches:
        raise ValueError("no validation batches")
    rank, world = accelerator.process_index, accelerator.num_processes
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    for round_ in range(math.ceil(len(batches) / world)):
        index = round_ * world + rank
        batch = batches[min(index, len(batches) - 1)]
        loss = loss_fn(model, to_device(batch, accelerator.device)).double()
        if index < len(batches):
            totals[0] += loss
            totals[1] += batch["n_items"]
    totals = accelerator.reduce(totals, reduction="sum")
    return (totals[0] / totals[1]).item()


class JsonlLog:
    """``log.jsonl``: one JSON object per logged step, appended and flushed line by line."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")

    def truncate(self, last_step: int) -> None:
        """Drop records after ``last_step`` (steps a resumed run will redo), and a line torn by a
        kill mid-write; the file is rewritten through a rename (:mod:`protrna.runtime.resume`)."""
        if not self.enabled or not self.path.exists():
            return
        journal = LineJournal(self.path)
        _, records = journal.read(accept=lambda record: _log_step(record[0]) is not None)
        journal.start([], [record for record in records if _log_step(record[0]) <= last_step])


def _log_step(line: str) -> int | None:
    try:
        step = json.loads(line).get("step")
    except (json.JSONDecodeError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def check_run_dir(config: TrainConfig) -> None:
    """Refuse an ``--output`` that holds a run unless resuming. The commands call this first, so
    that the refusal does not wait for minutes of model loading and feature caching."""
    out = config.output_dir
    previous = [p.name for p in (out / "log.jsonl", out / "checkpoints", out / "final") if p.exists()]
    if previous and not config.resume:
        raise FileExistsError(
            f"{out} already holds a run ({', '.join(previous)}): pass --resume to continue it, "
            "or choose another --output"
        )


def _prepare_run_dir(config: TrainConfig, run_info: dict, accelerator: Accelerator) -> Path | None:
    """Create the run directory; find the checkpoint to resume from; refuse to mix two runs.
    (``run.json`` is written later, once the checkpoint has been found to fit this run.)"""
    out = config.output_dir
    checkpoint = latest_checkpoint(out) if config.resume else None
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        check_run_dir(config)
        if checkpoint is None and config.resume:
            logger.info("no checkpoint in %s: starting from step 0", out)
    accelerator.wait_for_everyone()
    return checkpoint


def train(
    config: TrainConfig,
    accelerator: Accelerator,
    model: nn.Module,
    batches: Iterable[dict],
    loss_fn: LossFn,
    *,
    evaluate: Callable[[nn.Module], dict] | None = None,
    save_final: Callable[[Accelerator, nn.Module, Path], None] | None = None,
    run_info: dict | None = None,
    description: str = "train",
    progress: bool = True,
) -> dict:
    """Run the training loop; returns the last logged record. See the module docstring.
    ``progress``: the step bar on stderr (``--quiet`` turns it off; other processes never draw it)."""
    run_info = {"config": config.to_json(), **(run_info or {})}
    checkpoint = _prepare_run_dir(config, run_info, accelerator)
    log = JsonlLog(config.output_dir / "log.jsonl", enabled=accelerator.is_main_process)
    # Computed before accelerate wraps (and FSDP shards) the model; checked on resume.
    fingerprint = frozen_fingerprint(model)

    optimizer = build_optimizer(model, config)
    model, optimizer = accelerator.prepare(model, optimizer)
    step = 0
    if checkpoint is not None:
        step, data_state, facts = load_checkpoint(accelerator, checkpoint, model, optimizer)
        if facts.get("fingerprint") != fingerprint:
            raise ValueError(
                f"the frozen weights differ from those {checkpoint} was trained on: resume with "
                "the same source model and freezing options"
            )
        _warn_changes(facts.get("run_info", {}), run_info)
        if data_state is not None:
            batches.load_state_dict(data_state)
        logger.info("resumed from %s at step %d", checkpoint, step)
    else:
        # Different dropout draws on each process; the data streams are seeded by their owners.
        set_seed(config.seed + accelerator.process_index)
    if accelerator.is_main_process:  # only now: a refused resume leaves the run's record as it was
        write_atomic(config.output_dir / "run.json", json.dumps(run_info, indent=2, default=str) + "\n")
    log.truncate(step)
    resumed_at = step
    facts = {"fingerprint": fingerprint, "run_info": run_info}

    def checkpoint_now() -> None:
        data_state = batches.state_dict() if hasattr(batches, "state_dict") else None
        save_checkpoint(
            accelerator, config.output_dir, step, model, optimizer, data_state, facts, config.keep_checkpoints
        )

    model.train()
    batch_iter = iter(batches)
    progress = tqdm(
        total=config.max_steps,
        initial=step,
        desc=description,
        dynamic_ncols=True,
        disable=not (progress and accelerator.is_main_process),
    )
    record: dict = {}
    window_time, window_tokens = 0.0, 0.0  # training time only: evaluation and saving excluded
    while step < config.max_steps:
        step_start = time.perf_counter()
        lr = warmup_cosine_lr(
            step,
            max_lr=config.lr,
            warmup_steps=config.warmup_steps,
            max_steps=config.max_steps,
            min_lr=config.min_lr,
        )
        for group in optimizer.param_groups:
            group["lr"] = lr

        try:
            micro_batches = [next(batch_iter) for _ in range(config.grad_accum)]
        except StopIteration:
            raise ValueError(
                f"the training batches ran out at step {step}: they must repeat (loop over epochs)"
            ) from None
        counts = torch.tensor(
            [sum(b["n_items"] for b in micro_batches), sum(b.get("n_tokens", 0) for b in micro_batches)],
            dtype=torch.float64,
            device=accelerator.device,
        )
        n_items, n_tokens = accelerator.reduce(counts, reduction="sum").tolist()
        loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            # Gradients are all-reduced once per step, after the last micro-batch.
            with nullcontext() if last else accelerator.no_sync(model):
                batch_loss = loss_fn(model, to_device(batch, accelerator.device))
                # DDP/FSDP average gradients over processes; the factor turns that average into
                # the gradient of (sum of all items' losses) / (items in the step, all processes).
                accelerator.backward(batch_loss * accelerator.num_processes / max(n_items, 1.0))
            loss_sum += batch_loss.detach().double()
        grad_norm = (
            accelerator.clip_grad_norm_(model.parameters(), config.clip_grad)
            if config.clip_grad > 0
            else None
        )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        progress.update(1)

        loss = accelerator.reduce(loss_sum, reduction="sum").item() / max(n_items, 1.0)
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {step}: lower --lr or check the data")
        window_tokens += n_tokens
        window_time += time.perf_counter() - step_start

        metrics = {}
        if evaluate is not None and (step % config.eval_every == 0 or step == config.max_steps):
            model.eval()
            metrics = evaluate(model)
            model.train()
        if step % config.log_every == 0 or metrics or step == config.max_steps:
            record = {"step": step, "loss": loss, "lr": lr}
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            if window_tokens:
                record["tokens_per_s"] = window_tokens / max(window_time, 1e-9)
            record.update(metrics)
            log.write(record)
            progress.set_postfix(
                {k: f"{v:.4g}" for k, v in record.items() if k in ("loss", "lr", "valid_loss")}
            )
            window_time, window_tokens = 0.0, 0.0
        if step != resumed_at and (
            (config.save_every and step % config.save_every == 0) or step == config.max_steps
        ):
            checkpoint_now()
    progress.close()

    if save_final is not None:
        save_final(accelerator, model, config.output_dir / "final")
    accelerator.wait_for_everyone()
    return record


def _warn_changes(saved: dict, current: dict) -> None:
    saved_flat, current_flat = _flatten(saved), _flatten(current)
    for key in sorted(set(saved_flat) | set(current_flat)):
        if key != "config.resume" and saved_flat.get(key) != current_flat.get(key):
            logger.warning(
                "resuming with %s = %r (the checkpoint was made with %r)",
                key,
                current_flat.get(key),
                saved_flat.get(key),
            )


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.loads(json.dumps(value, default=str))
    return flat
