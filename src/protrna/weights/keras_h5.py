"""Import of the original's Keras ``save_weights`` files (legacy h5) into PyTorch.

Every quirk of the original files lives here, named (OpenFold's ``import_weights`` is the model):

* Each group lists its datasets in the attribute ``weight_names``. Keras prefixes them with
  names such as ``dense_17`` or ``multihead_attention_1`` that depend on what the saving process
  had built before, so tensors are identified by their group and position, never by suffixes.
* A file saved from a frozen model lists ``inv_freq`` (a constant of the rotary embedding) at
  position 9 of each block, one saved from a trainable model lists it last: it is dropped by name.
* Keras ``Dense`` kernels are (in, out); ``torch.nn.Linear`` wants (out, in).
* The LM head group repeats the embedding matrix (tied weights); the copy is checked, not loaded.
* ``inv_freq`` is checked against the rotary frequencies the model computes for itself.

Every dataset of the file must be used (loaded or checked): :class:`KerasWeightFile` records what
was read, and a dataset nothing read (an extra group, a dataset missing from ``weight_names``) is
an error naming it, so that a file of another layout can never be converted with parts left out.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Callable

import h5py
import numpy as np
import torch

from ..model import HEAD_DIM, ProtRNA, ProtRNAConfig, zero_contact_head

Transform = Callable[[np.ndarray], np.ndarray]


def _same(array: np.ndarray) -> np.ndarray:
    return array


def _transpose(array: np.ndarray) -> np.ndarray:
    return array.T


# One transformer block: the Keras ``weight_names`` order (inv_freq removed) -> HF ESM names.
BLOCK_TABLE: tuple[tuple[str, Transform], ...] = (
    ("attention.self.query.weight", _transpose),
    ("attention.self.query.bias", _same),
    ("attention.self.key.weight", _transpose),
    ("attention.self.key.bias", _same),
    ("attention.self.value.weight", _transpose),
    ("attention.self.value.bias", _same),
    ("attention.output.dense.weight", _transpose),
    ("attention.output.dense.bias", _same),
    ("attention.LayerNorm.weight", _same),  # self_attn_layer_norm, applied before attention
    ("attention.LayerNorm.bias", _same),
    ("intermediate.dense.weight", _transpose),  # fc1
    ("intermediate.dense.bias", _same),
    ("output.dense.weight", _transpose),  # fc2
    ("output.dense.bias", _same),
    ("LayerNorm.weight", _same),  # final_layer_norm, applied before the feed-forward
    ("LayerNorm.bias", _same),
)

# The LM head group, identified by the last two components of each dataset name.
LM_HEAD_TABLE: dict[str, tuple[str, Transform]] = {
    "dense/kernel:0": ("lm_head.dense.weight", _transpose),
    "dense/bias:0": ("lm_head.dense.bias", _same),
    "layer_norm/gamma:0": ("lm_head.layer_norm.weight", _same),
    "layer_norm/beta:0": ("lm_head.layer_norm.bias", _same),
}


class KerasFormatError(ValueError):
    """The file is not a Keras weight file of the expected layout."""


def _decoded(names: np.ndarray) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


class KerasWeightFile:
    """A legacy Keras weight file, open for reading, that remembers which datasets were read.

    >>> with KerasWeightFile("lm_tiny.h5") as h5:  # doctest: +SKIP
    ...     weights = h5.group_weights("embedding")
    ...     h5.require_all_used()  # KerasFormatError: 36 datasets were not used, e.g. ...
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"{self.path} does not exist" if not self.path.exists() else f"{self.path} is not a file"
            )
        try:
            self.h5 = h5py.File(self.path, "r")
        except OSError as error:
            raise KerasFormatError(f"{self.path}: not an HDF5 file ({error})") from None
        self._read: set[str] = set()

    def __enter__(self) -> "KerasWeightFile":
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.h5.close()

    def layer_names(self) -> list[str]:
        """The top-level groups, in the file's ``layer_names`` order."""
        return layer_names(self.h5)

    def group_weights(self, group_name: str) -> list[tuple[str, np.ndarray]]:
        """``(name, array)`` pairs of one top-level group, in its ``weight_names`` order."""
        if group_name not in self.h5:
            raise KerasFormatError(f"{self.path}: no group {group_name!r} (has {sorted(self.h5.keys())})")
        group = self.h5[group_name]
        if "weight_names" not in group.attrs:
            raise KerasFormatError(f"{self.path}: group {group_name!r} has no 'weight_names' attribute")
        weights = []
        for name in _decoded(group.attrs["weight_names"]):
            if name not in group or not isinstance(group[name], h5py.Dataset):
                raise KerasFormatError(f"{self.path}: group {group_name!r} lists {name!r}, which it does not hold")
            self._read.add(group[name].name)
            weights.append((name, np.asarray(group[name])))
        return weights

    def unused(self) -> list[str]:
        """HDF5 paths of the datasets nothing has read yet, sorted."""
        found: list[str] = []
        self.h5.visititems(lambda name, item: found.append(item.name) if isinstance(item, h5py.Dataset) else None)
        return sorted(set(found) - self._read)

    def require_all_used(self) -> None:
        """Raise :class:`KerasFormatError` naming the datasets that were never read."""
        unused = self.unused()
        if unused:
            shown = ", ".join(repr(n) for n in unused[:5]) + (", ..." if len(unused) > 5 else "")
            raise KerasFormatError(
                f"{self.path}: {len(unused)} tensor(s) of the file would not be used by the conversion: "
                f"{shown}. The file does not have the layout of the original; nothing was converted."
            )


def layer_names(h5: h5py.File) -> list[str]:
    """The ``layer_names`` root attribute of a Keras ``save_weights`` file."""
    if "layer_names" not in h5.attrs:
        raise KerasFormatError(
            f"{h5.filename}: no 'layer_names' attribute; not a Keras save_weights file"
        )
    return _decoded(h5.attrs["layer_names"])


def rotary_inv_freq(head_dim: int) -> np.ndarray:
    """The rotary frequencies of one attention head, as transformers' ESM computes them."""
    return (1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))).numpy()


def read_lm_state_dict(
    path: str | Path, attention_heads: int | None = None
) -> tuple[ProtRNAConfig, dict[str, torch.Tensor]]:
    """Read a ProtRNA language-model h5 of any size into a HF ``EsmForMaskedLM`` state dict.

    Layers and width come from the file; heads default to ``width / 64`` (the ESM-2 convention,
    the file does not store it). Every dataset of the file must be used.
    """
    path = Path(path)
    with KerasWeightFile(path) as h5:
        groups = h5.layer_names()
        blocks = sorted(
            (g for g in groups if g.startswith("layer_._")), key=lambda g: int(g.rsplit("_", 1)[1])
        )
        if not blocks or "embedding" not in groups:
            raise KerasFormatError(
                f"{path}: not a ProtRNA language-model file (layer groups: {groups[:5]}...)"
            )
        expected = [f"layer_._{i}" for i in range(len(blocks))]
        if blocks != expected:
            raise KerasFormatError(f"{path}: transformer blocks are not numbered 0..{len(blocks) - 1}")

        state: dict[str, np.ndarray] = {}
        ((_, embedding),) = h5.group_weights("embedding")
        state["esm.embeddings.word_embeddings.weight"] = embedding
        vocab_size, embed_dim = embedding.shape
        heads = attention_heads or max(1, embed_dim // HEAD_DIM)
        for index, block in enumerate(blocks):
            weights = []
            for name, array in h5.group_weights(block):
                if "inv_freq" not in name:
                    weights.append((name, array))
                elif attention_heads is None:  # explicit heads override what the file implies
                    _check_inv_freq(path, block, array, embed_dim // heads)
            if len(weights) != len(BLOCK_TABLE):
                raise KerasFormatError(
                    f"{path}: group {block!r} has {len(weights)} weights besides inv_freq, "
                    f"expected {len(BLOCK_TABLE)}"
                )
            for (_, array), (name, transform) in zip(weights, BLOCK_TABLE):
                state[f"esm.encoder.layer.{index}.{name}"] = transform(array)

        gamma, beta = (a for _, a in h5.group_weights("emb_layer_norm_after"))
        state["esm.encoder.emb_layer_norm_after.weight"] = gamma
        state["esm.encoder.emb_layer_norm_after.bias"] = beta

        for name, array in h5.group_weights("lm_head"):
            key = "/".join(name.split("/")[-2:])
            if key in LM_HEAD_TABLE:
                target, transform = LM_HEAD_TABLE[key]
                state[target] = transform(array)
            elif name.endswith("embeddings:0"):
                if not np.array_equal(array, embedding):
                    raise KerasFormatError(f"{path}: LM head decoder differs from the embedding")
            elif name.split("/")[-1] == "bias:0":
                state["lm_head.bias"] = array
            else:
                raise KerasFormatError(f"{path}: unexpected weight {name!r} in group 'lm_head'")
        h5.require_all_used()

    ffn = state["esm.encoder.layer.0.intermediate.dense.weight"].shape[0]
    config = ProtRNAConfig(
        num_layers=len(blocks), embed_dim=embed_dim, attention_heads=heads, ffn_embed_dim=ffn,
        vocab_size=vocab_size,
    )  # fmt: skip
    return config, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def _check_inv_freq(path: Path, block: str, stored: np.ndarray, head_dim: int) -> None:
    """The file's rotary constant must be the one the model recomputes (TF and torch round the
    power differently, by about one float32 ulp, hence the tolerance)."""
    expected = rotary_inv_freq(head_dim)
    if stored.shape != expected.shape or not np.allclose(stored, expected, rtol=1e-6, atol=0):
        hint = ""
        if stored.ndim == 1 and stored.size and head_dim != 2 * stored.size:
            hint = f" It suggests {2 * stored.size}-wide heads: give attention_heads / --attention-heads."
        raise KerasFormatError(
            f"{path}: inv_freq of group {block!r} (shape {stored.shape}) is not the rotary constant of "
            f"{head_dim}-wide attention heads.{hint}"
        )


def load_lm_h5(path: str | Path, attention_heads: int | None = None) -> ProtRNA:
    """A :class:`ProtRNA` with the weights of an original-layout h5 file."""
    config, state = read_lm_state_dict(path, attention_heads)
    model = ProtRNA(config)
    state["lm_head.decoder.weight"] = state["esm.embeddings.word_embeddings.weight"]
    missing, unexpected = model.lm.load_state_dict(state, strict=False)
    # inv_freq is a buffer recomputed from the config, and HF's EsmModel always builds a contact
    # head that ProtRNA never had (it stays unused); nothing else may be left out.
    missing = [k for k in missing if not k.endswith("inv_freq") and ".contact_head." not in k]
    if missing or unexpected:
        raise KerasFormatError(f"{path}: missing {missing}, unexpected {unexpected}")
    zero_contact_head(model.lm)
    model.lm.eval()
    return model

