"""Original h5 files into ``save_pretrained`` directories that are checked before they appear.

:func:`convert_h5` reads an original-layout Keras file (every tensor of it must be used, see
:mod:`.keras_h5` and :mod:`.keras_ss_head`), writes the model into a hidden sibling of the target
directory, reloads that copy and renames it into place only if the reloaded model has

* the same config,
* every tensor bit-identical to the converted model's (same name, dtype, shape and bytes), and
* bit-identical outputs on a fixed probe (:func:`probe_outputs`): the same float32 weights through
  the same code on the same CPU give the same bits, so no tolerance is needed.

Otherwise :class:`ConversionError` names the tensor, or the largest difference of the probe
outputs, and the hidden directory is deleted: a refused or interrupted conversion never leaves a
directory that loads. Only the digests and probe outputs of the converted model are kept while the
copy is reloaded, so checking needs memory for one model, not two.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import __version__
from ..model import ProtRNA
from .keras_h5 import KerasFormatError, KerasWeightFile, load_lm_h5
from .registry import WeightsKind

if TYPE_CHECKING:
    from ..heads.ss import RotaFormer

#: Provenance file written into each converted directory.
SOURCE_FILE = "protrna_source.json"

#: What a converted language model is run on before it is kept: lower case, T, N, a gap, padding.
PROBE_SEQUENCES = ("GGGAAACUUCGGUUUCCC", "acguTN-ag", "A")

#: The structure head's probe: seeded random representations of two RNAs, one of them padded.
PROBE_SEED = 0
PROBE_LENGTHS = (16, 9)

KIND_NAMES: dict[str, str] = {"lm": "language model", "ss_head": "structure head"}


class ConversionError(ValueError):
    """A converted directory does not reload into the model it was written from."""


def h5_kind(path: str | Path) -> WeightsKind:
    """``"lm"`` or ``"ss_head"``, from the Keras ``layer_names`` of an original-layout h5.

    >>> h5_kind("ssHead_RF_bprna.h5")  # doctest: +SKIP
    'ss_head'
    """
    with KerasWeightFile(path) as h5:
        names = h5.layer_names()
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
) -> "ProtRNA | RotaFormer":
    """A model (float32, eval mode) with the weights of an original-layout h5; ``kind`` is sniffed
    when not given."""
    kind = kind or h5_kind(path)
    if kind == "lm":
        return load_lm_h5(path, attention_heads=attention_heads)
    if attention_heads is not None:
        raise ValueError(f"{path}: attention_heads is for language models; this is a structure head")
    from .keras_ss_head import load_ss_head_h5

    return load_ss_head_h5(path)


def convert_h5(
    h5_path: str | Path,
    out_dir: str | Path,
    *,
    kind: WeightsKind | None = None,
    attention_heads: int | None = None,
    threshold: float | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Convert an original-layout h5 into a ``save_pretrained`` directory, checked and atomic.

    Args:
        out_dir: must not exist or be empty; it appears only once the reloaded copy has passed
            :func:`verify_saved`.
        kind: ``"lm"`` or ``"ss_head"``; sniffed from the file when not given.
        attention_heads: heads per block of a language model (not stored in the file).
        threshold: decision threshold stored in a structure head's config (the file has none;
            without it the head keeps the released head's 0.25).
        provenance: extra entries for ``protrna_source.json``.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    >>> convert_h5("ssHead_RF_rnabench_inter.h5", "inter-head", threshold=0.14)  # doctest: +SKIP
    """
    h5_path, out_dir = Path(h5_path), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not an empty directory; choose another")
    kind = kind or h5_kind(h5_path)
    if threshold is not None and kind != "ss_head":
        raise ValueError(f"{h5_path}: a threshold is for structure heads; this is a {KIND_NAMES[kind]}")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ValueError(f"{h5_path}: threshold must lie in (0, 1), got {threshold}")
    model = load_h5(h5_path, kind, attention_heads=attention_heads)
    if threshold is not None:
        model.config.threshold = float(threshold)
    expected = fingerprint(model)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temporary.mkdir()
    try:
        model.save_pretrained(temporary)
        del model  # only the fingerprint is needed from here on: one model in memory, not two
        gc.collect()
        source = {"source": str(h5_path.resolve()), "kind": kind, **(provenance or {})}
        (temporary / SOURCE_FILE).write_text(
            json.dumps({**source, "protrna_version": __version__}, indent=2) + "\n"
        )
        verify_saved(temporary, expected, label=str(out_dir))
        for file in temporary.iterdir():  # durable before it becomes visible
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(temporary, out_dir)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return out_dir


# ---- checking a saved directory ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What a saved copy of a model must reproduce: its class, config, a digest of every tensor
    (dtype, shape, blake2b of the bytes) and its outputs on the probe."""

    model_class: type
    config: Any
    tensors: dict[str, tuple[str, tuple[int, ...], str]]
    probe: torch.Tensor


def fingerprint(model: "ProtRNA | RotaFormer") -> Fingerprint:
    """The :class:`Fingerprint` of a language model or structure head."""
    return Fingerprint(
        model_class=type(model),
        config=dataclasses.replace(model.config),
        tensors={name: _digest(tensor) for name, tensor in model.state_dict().items()},
        probe=probe_outputs(model),
    )


def _digest(tensor: torch.Tensor) -> tuple[str, tuple[int, ...], str]:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    raw = flat.view(torch.uint8).numpy()  # the bytes as stored, whatever the dtype
    return str(tensor.dtype), tuple(tensor.shape), hashlib.blake2b(memoryview(raw)).hexdigest()


def probe_outputs(model: "ProtRNA | RotaFormer") -> torch.Tensor:
    """Outputs of ``model`` on the fixed probe, as float32 on the CPU.

    A language model gives its logits on :data:`PROBE_SEQUENCES`; a structure head its pair
    logits on representations drawn from ``torch.Generator().manual_seed(PROBE_SEED)`` for RNAs
    of :data:`PROBE_LENGTHS` nucleotides (BOS and EOS included, the shorter one padded).
    """
    with torch.inference_mode():
        if isinstance(model, ProtRNA):
            tokens = model.alphabet.get_batch_converter()(list(PROBE_SEQUENCES))
            return model(tokens)["logits"].float().cpu()
        config = model.config
        generator = torch.Generator().manual_seed(PROBE_SEED)
        tokens = max(PROBE_LENGTHS) + 2
        representations = torch.randn(len(PROBE_LENGTHS), tokens, config.input_dim, generator=generator)
        device = next(model.parameters()).device
        logits = model(representations.to(device), lengths=torch.tensor(PROBE_LENGTHS, device=device))
        return logits.float().cpu()


def verify_saved(directory: str | Path, expected: "Fingerprint | nn.Module", *, label: str | None = None) -> None:
    """Reload ``directory`` and raise :class:`ConversionError` unless it reproduces ``expected``
    (a :class:`Fingerprint`, or the model it should equal) bit for bit.

    ``label`` names the directory in messages (the conversion passes its final name, since the
    directory checked is a hidden temporary one).

    >>> verify_saved("converted/", load_h5("ssHead_RF_bprna.h5"))  # doctest: +SKIP
    """
    if isinstance(expected, nn.Module):
        expected = fingerprint(expected)
    label = label or str(directory)
    reloaded = expected.model_class.from_pretrained(directory).eval()
    if reloaded.config != expected.config:
        different = [
            f"{f.name}={getattr(reloaded.config, f.name)!r} (converted: {getattr(expected.config, f.name)!r})"
            for f in dataclasses.fields(expected.config)
            if getattr(reloaded.config, f.name, None) != getattr(expected.config, f.name)
        ]
        raise ConversionError(f"{label}: the saved config does not reload as converted: {', '.join(different)}")

    found = {name: _digest(tensor) for name, tensor in reloaded.state_dict().items()}
    missing = sorted(expected.tensors.keys() - found.keys())
    extra = sorted(found.keys() - expected.tensors.keys())
    if missing or extra:
        raise ConversionError(f"{label}: the reloaded model lacks tensors {missing[:5]} and has others {extra[:5]}")
    for name, (dtype, shape, digest) in expected.tensors.items():
        got_dtype, got_shape, got_digest = found[name]
        if (got_dtype, got_shape) != (dtype, shape):
            raise ConversionError(
                f"{label}: tensor {name!r} reloads as {got_dtype} {list(got_shape)}, converted as {dtype} {list(shape)}"
            )
        if got_digest != digest:
            raise ConversionError(f"{label}: tensor {name!r} reloads with other values than it was converted with")

    probe = probe_outputs(reloaded)
    if probe.shape != expected.probe.shape or not torch.equal(probe, expected.probe):
        difference = (
            (probe - expected.probe).abs().max().item() if probe.shape == expected.probe.shape else float("nan")
        )
        raise ConversionError(
            f"{label}: the reloaded model's probe logits differ from the converted model's "
            f"(max abs difference {difference:.3g}; shapes {list(probe.shape)} and {list(expected.probe.shape)})"
        )
