"""Getting models ready for inference: device and dtype checks, loading by name or path, CPU
weight packing, and the per-batch budgets that suit each device."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..cpu import pack_for_cpu_inference
from ..heads.ss import RotaFormer
from ..model import ProtRNA
from ..pretrained import load_pretrained_as
from .defaults import CPU_MAX_PAIRS, CPU_MAX_TOKENS, GPU_MAX_PAIRS, GPU_MAX_TOKENS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def checked_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, with a clear error for a bad name or a device this PyTorch lacks.

    >>> checked_device("cpu")
    device(type='cpu')
    """
    try:
        target = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device (cpu, cuda, cuda:1, mps, ...)") from None
    if target.type == "cuda" and (not torch.cuda.is_available() or (target.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"--device {device}: this PyTorch sees {torch.cuda.device_count()} CUDA devices")
    return target


def checked_dtype(dtype: str | None) -> torch.dtype | None:
    """The torch dtype named ``dtype`` (``None`` stays ``None``: keep the model's).

    >>> checked_dtype("bfloat16")
    torch.bfloat16
    """
    if dtype is None:
        return None
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    return DTYPES[dtype]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def token_budget(max_tokens: int | None, device: torch.device) -> int:
    """``max_tokens`` (checked), or the default language-model token budget on ``device``.

    >>> token_budget(None, torch.device("cpu")), token_budget(4096, torch.device("cpu"))
    (1536, 4096)
    """
    if max_tokens is None:
        return GPU_MAX_TOKENS if device.type == "cuda" else CPU_MAX_TOKENS
    if max_tokens < 1:
        raise ValueError(f"--max-tokens must be at least 1, not {max_tokens}")
    return max_tokens


def pair_budget(max_pairs: int | None, device: torch.device) -> int:
    """``max_pairs`` (checked), or the default structure-head budget (B x L x L) on ``device``.

    >>> pair_budget(None, torch.device("cpu"))
    65536
    """
    if max_pairs is None:
        return GPU_MAX_PAIRS if device.type == "cuda" else CPU_MAX_PAIRS
    if max_pairs < 1:
        raise ValueError(f"the pair budget must be at least 1, not {max_pairs}")
    return max_pairs


def prepare_model(model: ProtRNA | str | Path, dtype: str | None = None, device: str | None = None) -> ProtRNA:
    """Load ``model`` if it is a name or path, then move it to ``device`` and cast to ``dtype``.

    A loaded model goes to CUDA when present and float32 unless told otherwise; an in-memory
    model keeps its device and dtype unless ``device`` / ``dtype`` are given (``.to`` changes the
    caller's model in place). Checks come before a model of several GB is loaded.
    """
    target = checked_device(device) if device is not None else None
    torch_dtype = checked_dtype(dtype)
    if isinstance(model, (str, Path)):
        model = load_pretrained_as(model, ProtRNA, "a language model")
        target = target or default_device()
        torch_dtype = torch_dtype or torch.float32
    target = target or model.device
    if torch_dtype is torch.float16 and target.type == "cpu":
        raise ValueError("float16 is for GPUs; on CPU use bfloat16")
    return model.to(device=target, dtype=torch_dtype or model.dtype).eval()


def prepare_head(head: RotaFormer | str | Path, like: nn.Module) -> RotaFormer:
    """Load a structure head (name, path or module) onto the device and dtype of ``like``."""
    if isinstance(head, (str, Path)):
        head = load_pretrained_as(head, RotaFormer, "a structure head")
    parameter = next(like.parameters())
    return head.to(device=parameter.device, dtype=parameter.dtype).eval()


def pack_if_owned(model: ProtRNA, owned: bool, max_tokens: int):
    """Pack ``model``'s linear layers for CPU inference (see :mod:`protrna.cpu`).

    A model the job loaded itself (``owned``) stays packed; a caller's model is packed for the
    job only, and the returned callable (or ``None``) gives it its own layers back.
    """
    restore = pack_for_cpu_inference(model, rows_hint=max_tokens)
    return None if owned else restore
