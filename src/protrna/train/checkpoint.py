"""Training checkpoints that resume exactly and never leave a half-written latest checkpoint.

Layout under the run directory::

    checkpoints/step_00001000/trainer.pt    step, trainable weights, optimizer state, run facts
    checkpoints/step_00001000/rank_0.pt     random states and data position of process 0
    checkpoints/step_00001000/rank_1.pt     ... one per process

Only *trainable* weights are saved: the frozen ones (most of ESM-2 during transfer) come from the
source model again on resume, and a fingerprint of them, kept in ``trainer.pt``, makes sure they
are the same. A checkpoint is written into ``checkpoints/.tmp-step_...`` and renamed when every
process has finished writing, so the newest ``step_*`` directory is always complete; a killed
run leaves at most a ``.tmp-`` directory, which the next save removes.

Weights and optimizer state go through ``torch.distributed.checkpoint.state_dict``, which gives
the full, unwrapped state for a plain module, DDP and FSDP alike (FSDP gathers the shards).
DeepSpeed keeps its own optimizer; there the model and optimizer part is ``accelerate``'s
``save_state``/``load_state`` instead.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ..digest import tensors_digest

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step_(\d{8})$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in ``run_dir``, or ``None``."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return max(steps)[1] if steps else None


# ---- random states ----------------------------------------------------------------------------


def capture_rng() -> dict:
    """Python, NumPy and torch (CPU and CUDA) random states, as tensors and plain values only
    so that ``torch.load(weights_only=True)`` reads them back."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- frozen weights ---------------------------------------------------------------------------


def frozen_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the names and bytes of every frozen parameter of ``model``.

    >>> model = nn.Linear(2, 2).requires_grad_(False)
    >>> frozen_fingerprint(model) == frozen_fingerprint(model)
    True
    """
    return tensors_digest((name, p) for name, p in model.named_parameters() if not p.requires_grad)


# ---- save / load ------------------------------------------------------------------------------

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _torch_optimizer(optimizer):
    """The ``torch.optim`` optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


# What DDP, FSDP, activation checkpointing and torch.compile insert into parameter names.
_WRAPPER_PARTS = frozenset({"module", "_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"})


def trainable_names(model: nn.Module) -> set[str]:
    """Names of the trained parameters, as the unwrapped model spells them.

    >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    >>> _ = model[0].requires_grad_(False)
    >>> sorted(trainable_names(model))
    ['1.bias', '1.weight']
    """
    return {
        ".".join(part for part in name.split(".") if part not in _WRAPPER_PARTS)
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def save_checkpoint(
    accelerator: Accelerator,
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer,
    data_state: dict | None,
    facts: dict | None = None,
    keep: int = 2,
) -> Path:
    """Write the checkpoint of ``step``; every process must call this. Returns its path.

    ``facts`` (plain values: run configuration, fingerprint) are stored with the weights and come
    back from :func:`load_checkpoint`. The ``keep`` newest checkpoints are kept (0 keeps all).
    """
    folder = Path(run_dir) / CHECKPOINTS
    final = folder / checkpoint_name(step)
    temporary = folder / f".tmp-{checkpoint_name(step)}"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".tmp-*"):
            shutil.rmtree(stale)  # left by a run killed while saving
        temporary.mkdir()
    accelerator.wait_for_everyone()

    trainer = {"step": step, "facts": facts or {}}
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.save_state(str(temporary / "accelerate"))
    else:
        # Collective under FSDP (shards are gathered to process 0): every process calls.
        keep_names = trainable_names(model)
        weights = get_model_state_dict(model, options=_FULL)
        trainer["model"] = {k: v for k, v in weights.items() if k in keep_names}
        trainer["optimizer"] = get_optimizer_state_dict(model, _torch_optimizer(optimizer), options=_FULL)
    if accelerator.is_main_process:
        torch.save(trainer, temporary / "trainer.pt")
    torch.save({"rng": capture_rng(), "data": data_state}, temporary / f"rank_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        if final.exists():  # the same step saved again, e.g. a resumed run that ends where it began
            shutil.rmtree(final)
        temporary.rename(final)
        if keep > 0:
            older = sorted(p for p in folder.iterdir() if _NAME.match(p.name))[:-keep]
            for path in older:
                shutil.rmtree(path)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    accelerator: Accelerator, path: str | Path, model: nn.Module, optimizer
) -> tuple[int, dict | None, dict]:
    """Load a checkpoint into the (prepared) ``model`` and ``optimizer`` and restore this
    process's random states. Returns ``(step, data_state, facts)``."""
    path = Path(path)
    rank_file = path / f"rank_{accelerator.process_index}.pt"
    saved_ranks = len(list(path.glob("rank_*.pt")))
    if saved_ranks != accelerator.num_processes or not rank_file.exists():
        raise ValueError(
            f"{path} was written by {saved_ranks} processes and this run has "
            f"{accelerator.num_processes}: resume with the same number of processes (the data "
            "stream of each process is part of the checkpoint)"
        )
    trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.load_state(str(path / "accelerate"))
    else:
        expected = trainable_names(model)
        saved = set(trainer["model"])
        if saved != expected:
            raise ValueError(
                f"{path} holds trainable weights {sorted(saved - expected)[:5]}... that this run "
                f"does not train, or misses {sorted(expected - saved)[:5]}...: resume with the same "
                "model and freezing options"
            )
        try:
            set_model_state_dict(
                model, trainer["model"], options=StateDictOptions(full_state_dict=True, strict=False)
            )
        except RuntimeError as error:  # same names, other shapes: e.g. another --hidden-dim
            first = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error))
            raise ValueError(
                f"{path} holds weights of other shapes than this run's model ({first}): resume with the "
                "same model options"
            ) from None
        set_optimizer_state_dict(
            model,
            _torch_optimizer(optimizer),
            trainer["optimizer"],
            options=StateDictOptions(full_state_dict=True),
        )
    own = torch.load(rank_file, map_location="cpu", weights_only=True)
    restore_rng(own["rng"])
    return trainer["step"], own["data"], trainer["facts"]
