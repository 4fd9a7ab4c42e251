"""One entry point for pretrained weights in any of their forms: official name, original h5, or a
directory written by ``save_pretrained``.

Official weights are downloaded once (checksummed, see :mod:`protrna.weights.download`), converted
once into ``<cache>/models/<name>/`` (:mod:`protrna.weights.cache`, :mod:`protrna.weights.convert`)
and loaded from there afterwards, with no network; the cache layout is described in
:mod:`protrna.weights.registry`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .model import ProtRNA

# Conversion and the cache live in protrna.weights; their public names stay importable from here.
from .weights.cache import fetch_official, official_model_dir
from .weights.convert import SOURCE_FILE, convert_h5, h5_kind, load_h5
from .weights.keras_h5 import KerasFormatError
from .weights.registry import OFFICIAL_WEIGHTS

if TYPE_CHECKING:
    from .heads.ss import RotaFormer

__all__ = [
    "SOURCE_FILE", "convert_h5", "fetch_official", "h5_kind", "load_h5", "load_pretrained_as",
    "load_pretrained_model", "official_model_dir", "source_name",
]  # fmt: skip

#: ``model_type`` in ``config.json`` -> what the directory holds.
LM_MODEL_TYPE = "esm"
HEAD_MODEL_TYPE = "protrna-rotaformer"

ACCEPTED_FORMS = (
    f"an official name ({', '.join(OFFICIAL_WEIGHTS)}), a Keras .h5 file of the original layout, "
    f"or a directory written by save_pretrained (config.json with model_type {LM_MODEL_TYPE!r} "
    f"or {HEAD_MODEL_TYPE!r})"
)


def load_pretrained_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    name: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    attention_heads: int | None = None,
    progress: bool = True,
) -> "ProtRNA | RotaFormer":
    """Load the ProtRNA language model or the RotaFormer structure head, in eval mode.

    Args:
        name_or_path: one of

            * an official name (a key of
              :data:`protrna.weights.registry.OFFICIAL_WEIGHTS`: the language model, the bpRNA
              head and the three RnaBench heads): the converted copy in the cache, made on first
              use by downloading the original from Zenodo (md5 checked) and converting it (checked
              by reloading it; a head keeps the original's threshold in ``head.config.threshold``). With ``PROTRNA_OFFLINE=1`` or no network, an original
              put by hand into ``<cache>/downloads/`` is used. (A local directory that happens
              to have an official name is loaded with ``./name``.)
            * a Keras ``.h5`` of the original layout; language model and head are told apart by
              the file's ``layer_names``.
            * a directory written by ``save_pretrained`` (``ProtRNA`` or ``RotaFormer``).
        name: the original's keyword (``load_pretrained_model(name="ProtRNA_pretrained")``), the
            same as ``name_or_path``.
        device, dtype: where and in which precision to put the model (``dtype`` may be a name
            such as ``"bfloat16"`` or ``"bf16"``).
        attention_heads: heads per block of a language-model h5 (the file does not store them;
            the default is width / 64). For directories and official names, only checked.
        progress: progress bar on stderr while downloading.

    >>> lm = load_pretrained_model("ProtRNA_pretrained")  # doctest: +SKIP
    >>> head = load_pretrained_model("ssHead_RF_bprna", device="cuda")  # doctest: +SKIP
    """
    if (name_or_path is None) == (name is None):
        raise TypeError("give the model as name_or_path or as name=, once")
    name_or_path = name if name_or_path is None else name_or_path
    torch_dtype = _torch_dtype(dtype)
    if isinstance(name_or_path, str) and name_or_path in OFFICIAL_WEIGHTS:
        model = _load_directory(
            official_model_dir(name_or_path, progress=progress), attention_heads
        )
    else:
        path = Path(name_or_path).expanduser()
        if path.is_dir():
            model = _load_directory(path, attention_heads)
        elif path.is_file():
            try:
                kind = h5_kind(path)
            except KerasFormatError as error:  # a file, but not one of ours
                raise KerasFormatError(f"{error}. Expected {ACCEPTED_FORMS}.") from None
            model = load_h5(path, kind, attention_heads=attention_heads)
        else:
            hint = ""
            if path.stem in OFFICIAL_WEIGHTS:  # the original's file name, e.g. ProtRNA_pretrained.h5
                hint = f" (official weights load by name: {path.stem!r})"
            raise FileNotFoundError(
                f"{str(name_or_path)!r} is neither an official name nor an existing file or "
                f"directory{hint}. Expected {ACCEPTED_FORMS}."
            )
    model.eval()
    if device is not None or torch_dtype is not None:
        model.to(device=device, dtype=torch_dtype)
    return model


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def _torch_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    named = _DTYPES.get(dtype, getattr(torch, dtype, None))  # "float64" too, for checks
    if not isinstance(named, torch.dtype):
        raise ValueError(f"dtype {dtype!r}: use float32, bfloat16 or float16 (or a torch.dtype)")
    return named


def load_pretrained_as(source: str | os.PathLike, expected: type, what: str) -> nn.Module:
    """:func:`load_pretrained_model`, checked to give an ``expected`` model (``what`` names it in
    the error); the model remembers its ``source`` for the settings that jobs record."""
    model = load_pretrained_model(source)
    if not isinstance(model, expected):
        raise ValueError(f"{source} is not {what} (it loads as {type(model).__name__})")
    model.source = source_name(source)
    return model


def source_name(source: str | os.PathLike) -> str:
    """How jobs record where a model came from: an official name as it is, a path made absolute,
    so that a rerun or a ``--predict`` from another folder still finds and matches it."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else str(source)


# ---- saved directories ------------------------------------------------------------------


def _load_directory(directory: Path, attention_heads: int | None) -> nn.Module:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} has no config.json. Expected {ACCEPTED_FORMS}.")
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type == HEAD_MODEL_TYPE:
        if attention_heads is not None:
            raise ValueError(
                f"{directory}: attention_heads is for language models; this is a structure head"
            )
        from .heads.ss import RotaFormer

        return RotaFormer.from_pretrained(directory)
    if model_type == LM_MODEL_TYPE:
        model = ProtRNA.from_pretrained(directory)
        if attention_heads is not None and attention_heads != model.attention_heads:
            raise ValueError(
                f"{directory} has {model.attention_heads} attention heads, not {attention_heads}; "
                "attention_heads only chooses the heads when converting an h5"
            )
        return model
    raise ValueError(
        f"{config_path}: model_type {model_type!r} is not a ProtRNA model. Expected {ACCEPTED_FORMS}."
    )
