"""One entry point for pretrained weights in any of their forms: official name, original h5, or a
directory written by ``save_pretrained``.

Official weights are downloaded once (checksummed, see :mod:`protrna.weights.download`), converted
once into ``<cache>/models/<name>/`` and loaded from there afterwards, with no network; the cache
layout is described in :mod:`protrna.weights.registry`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import filelock
import h5py
import torch
from torch import nn

from . import __version__
from .model import ProtRNA
from .weights.download import (
    ChecksumError,
    DownloadError,
    OfflineError,
    download,
    md5sum,
    zenodo_record_files,
)
from .weights.keras_h5 import KerasFormatError, layer_names, load_lm_h5
from .weights.registry import (
    OFFICIAL_WEIGHTS,
    OfficialWeights,
    WeightsKind,
    cache_root,
    downloads_dir,
    get_official,
    locks_dir,
    offline,
    record_json_path,
)

if TYPE_CHECKING:
    from .heads.ss import RotaFormer

logger = logging.getLogger(__name__)

#: ``model_type`` in ``config.json`` -> what the directory holds.
LM_MODEL_TYPE = "esm"
HEAD_MODEL_TYPE = "protrna-rotaformer"

#: Provenance file written into each converted directory.
SOURCE_FILE = "protrna_source.json"

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

            * an official name, ``"ProtRNA_pretrained"`` or ``"ssHead_RF_bprna"``: the converted
              copy in the cache, made on first use by downloading the original from Zenodo (md5
              checked) and converting it. With ``PROTRNA_OFFLINE=1`` or no network, an original
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
            model = load_h5(path, attention_heads=attention_heads)
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


# ---- original h5 files ------------------------------------------------------------------


_KIND_NAMES = {"lm": "language model", "ss_head": "structure head"}


def h5_kind(path: str | Path) -> WeightsKind:
    """``"lm"`` or ``"ss_head"``, from the Keras ``layer_names`` of an original-layout h5."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist" if not Path(path).exists() else f"{path} is not a file")
    try:
        h5 = h5py.File(path, "r")
    except OSError as error:
        raise KerasFormatError(
            f"{path}: not an HDF5 file ({error}). Expected {ACCEPTED_FORMS}."
        ) from None
    with h5:
        names = layer_names(h5)
    if "embedding" in names and any(n.startswith("layer_._") for n in names):
        return "lm"
    if any(n.startswith(("conv2d", "aa_embedding", "evoformer_ensemble_")) for n in names):
        return "ss_head"
    raise KerasFormatError(
        f"{path}: layer groups {names[:6]} are neither those of a ProtRNA language model "
        "(embedding, layer_._0, ...) nor of a RotaFormer head (conv2d, aa_embedding, "
        "evoformer_ensemble_*)"
    )


def load_h5(
    path: str | Path, kind: WeightsKind | None = None, attention_heads: int | None = None
) -> nn.Module:
    """A model with the weights of an original-layout h5; ``kind`` is sniffed when not given."""
    kind = kind or h5_kind(path)
    if kind == "lm":
        return load_lm_h5(path, attention_heads=attention_heads)
    if attention_heads is not None:
        raise ValueError(f"{path}: attention_heads is for language models; this is a structure head")
    from .weights.keras_ss_head import load_ss_head_h5

    return load_ss_head_h5(path)


def convert_h5(
    h5_path: str | Path, out_dir: str | Path, *, attention_heads: int | None = None
) -> Path:
    """Convert an original-layout h5 into a ``save_pretrained`` directory, written atomically.

    ``out_dir`` must not exist or be empty. Returns it.

    >>> convert_h5("ProtRNA_pretrained.h5", "protrna-650m")  # doctest: +SKIP
    """
    h5_path, out_dir = Path(h5_path), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not an empty directory; choose another")
    kind = h5_kind(h5_path)
    model = load_h5(h5_path, kind, attention_heads=attention_heads)
    return _save_atomically(model, out_dir, {"source": str(h5_path.resolve()), "kind": kind})


def _save_atomically(model: nn.Module, final: Path, source: dict) -> Path:
    """``save_pretrained`` into a hidden sibling of ``final``, then one ``os.replace``: an
    interrupted conversion leaves a ``.<name>.tmp-*`` directory that nothing loads, never a half
    ``final``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temporary.mkdir()
    try:
        model.save_pretrained(temporary)
        provenance = {**source, "protrna_version": __version__}
        (temporary / SOURCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        for file in temporary.iterdir():  # durable before it becomes visible
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(temporary, final)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return final


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


# ---- official weights -------------------------------------------------------------------


def official_model_dir(name: str, *, progress: bool = True) -> Path:
    """The converted directory of official weights ``name``, downloading and converting them
    first if the cache does not hold them yet.

    >>> official_model_dir("ssHead_RF_bprna")  # doctest: +SKIP
    PosixPath('/home/me/.cache/protrna/models/ssHead_RF_bprna')
    """
    weights = get_official(name)
    final = weights.converted_dir
    if (final / "config.json").is_file():  # directories appear whole, see _save_atomically
        return final
    with _cache_lock(name):
        if (final / "config.json").is_file():  # another process finished while we waited
            return final
        for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a killed conversion
            shutil.rmtree(stale, ignore_errors=True)
        h5_path = fetch_official(weights, progress=progress)
        logger.info("converting %s into %s", h5_path, final)
        fix = f"delete {h5_path} and load again to download it afresh, or put the right file there"
        try:
            found = h5_kind(h5_path)
        except KerasFormatError as error:  # e.g. truncated by a full disk, or a file put there by hand
            raise KerasFormatError(f"{error}\nThis file is the cached {name}: {fix}") from None
        if found != weights.kind:
            raise KerasFormatError(
                f"{h5_path} holds a {_KIND_NAMES[found]}, not {name} (a {_KIND_NAMES[weights.kind]}): {fix}"
            )
        model = load_h5(h5_path, weights.kind)
        source = {"name": name, "source": str(h5_path), "url": weights.url, "kind": weights.kind}
        _save_atomically(model, final, source)
    return final


def fetch_official(weights: OfficialWeights | str, *, progress: bool = True) -> Path:
    """The original h5 of official weights in ``<cache>/downloads/``, downloaded if missing.

    A file put there by hand is used as is (offline, its md5 is checked only if the Zenodo record
    JSON is cached too).
    """
    if isinstance(weights, str):
        weights = get_official(weights)
    dest = weights.download_path
    if offline():
        if not dest.exists():
            raise OfflineError(_missing_message(weights, "PROTRNA_OFFLINE is set"))
        _verify_by_hand(weights, dest)
        return dest
    try:
        files = zenodo_record_files(weights.record)
        if weights.filename not in files:  # the cached record may be out of date
            files = zenodo_record_files(weights.record, refresh=True)
    except DownloadError as error:  # no network, or Zenodo is down
        if dest.exists():
            _verify_by_hand(weights, dest)
            return dest
        raise DownloadError(_missing_message(weights, str(error))) from error
    remote = files.get(weights.filename)
    if remote is None:
        raise DownloadError(
            f"the Zenodo record {weights.record} lists no {weights.filename} "
            f"(it has {', '.join(files) or 'no files'})"
        )
    try:
        try:
            return download(weights.url, dest, md5=remote.md5, size=remote.size, progress=progress)
        except ChecksumError:
            # The cached record may be older than the file (a new upload, a mirror's own record):
            # ask once more; only a changed checksum is worth downloading again.
            try:
                fresh = zenodo_record_files(weights.record, refresh=True).get(weights.filename)
            except DownloadError:
                fresh = None
            if fresh is None or (fresh.md5, fresh.size) == (remote.md5, remote.size):
                raise
            logger.info("the published checksum of %s has changed; downloading it again", weights.filename)
            return download(weights.url, dest, md5=fresh.md5, size=fresh.size, progress=progress)
    except ChecksumError:
        raise
    except DownloadError as error:
        raise DownloadError(_missing_message(weights, str(error))) from error


def _verify_by_hand(weights: OfficialWeights, path: Path) -> None:
    """Check a file found in the downloads directory, if the published md5 is known offline."""
    if not record_json_path(weights.record).exists():
        warnings.warn(
            f"using {path} without checking its md5: the Zenodo record is not cached "
            f"({record_json_path(weights.record)}). Compare it by hand with the checksum at "
            f"https://zenodo.org/records/{weights.record}.",
            stacklevel=3,
        )
        return
    remote = zenodo_record_files(weights.record).get(weights.filename)
    if remote is None or remote.md5 is None:
        warnings.warn(
            f"using {path} without checking it: the cached record has no md5 for it", stacklevel=3
        )
        return
    actual = md5sum(path)
    if actual != remote.md5:
        raise ChecksumError(
            f"{path}: md5 mismatch: expected {remote.md5}, got {actual}. The file is damaged or "
            f"another file; delete it and download {weights.url} again."
        )


def _missing_message(weights: OfficialWeights, reason: str) -> str:
    return (
        f"{weights.name} is not in the cache and cannot be downloaded ({reason}).\n"
        f"Download {weights.url} (about {weights.approx_size}) on a machine with network and put "
        f"it into {downloads_dir()}/ (as {weights.filename}); or run `protrna download "
        f"{weights.name}` there and copy {cache_root()}/models/{weights.name}/ to this machine."
    )


@contextmanager
def _cache_lock(name: str) -> Iterator[None]:
    """One process at a time downloads and converts ``name``; the others wait, then reuse it."""
    locks_dir().mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(locks_dir() / f"{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        logger.info("another process is fetching %s; waiting for it", name)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
