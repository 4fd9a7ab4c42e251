"""Import of the original's Keras ``save_weights`` files (legacy h5) into PyTorch.

Every quirk of the original files lives here, named (OpenFold's ``import_weights`` is the model):

* Each group lists its datasets in the attribute ``weight_names``. Keras prefixes them with
  names such as ``dense_17`` or ``multihead_attention_1`` that depend on what the saving process
  had built before, so tensors are identified by their group and position, never by suffixes.
* A file saved from a frozen model lists ``inv_freq`` (a constant of the rotary embedding) at
  position 9 of each block, one saved from a trainable model lists it last: it is dropped by name.
* Keras ``Dense`` kernels are (in, out); ``torch.nn.Linear`` wants (out, in).
* The LM head group repeats the embedding matrix (tied weights); the copy is checked, not loaded.
"""

from __future__ import annotations

from pathlib import Path
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


def group_weights(h5: h5py.File, group_name: str) -> list[tuple[str, np.ndarray]]:
    """``(name, array)`` pairs of one top-level group, in the group's ``weight_names`` order."""
    if group_name not in h5:
        raise KerasFormatError(f"{h5.filename}: no group {group_name!r} (has {sorted(h5.keys())})")
    group = h5[group_name]
    if "weight_names" not in group.attrs:
        raise KerasFormatError(f"{h5.filename}: group {group_name!r} has no 'weight_names' attribute")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["weight_names"]]
    return [(name, np.asarray(group[name])) for name in names]


def layer_names(h5: h5py.File) -> list[str]:
    if "layer_names" not in h5.attrs:
        raise KerasFormatError(
            f"{h5.filename}: no 'layer_names' attribute; not a Keras save_weights file"
        )
    return [n.decode() if isinstance(n, bytes) else str(n) for n in h5.attrs["layer_names"]]


def read_lm_state_dict(
    path: str | Path, attention_heads: int | None = None
) -> tuple[ProtRNAConfig, dict[str, torch.Tensor]]:
    """Read a ProtRNA language-model h5 of any size into a HF ``EsmForMaskedLM`` state dict.

    Layers and width come from the file; heads default to ``width / 64`` (the ESM-2 convention,
    the file does not store it).
    """
    path = Path(path)
    with h5py.File(path, "r") as h5:
        groups = layer_names(h5)
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
        ((_, embedding),) = group_weights(h5, "embedding")
        state["esm.embeddings.word_embeddings.weight"] = embedding
        for index, block in enumerate(blocks):
            weights = [(n, a) for n, a in group_weights(h5, block) if "inv_freq" not in n]
            if len(weights) != len(BLOCK_TABLE):
                raise KerasFormatError(
                    f"{path}: group {block!r} has {len(weights)} weights besides inv_freq, "
                    f"expected {len(BLOCK_TABLE)}"
                )
            for (_, array), (name, transform) in zip(weights, BLOCK_TABLE):
                state[f"esm.encoder.layer.{index}.{name}"] = transform(array)

        gamma, beta = (a for _, a in group_weights(h5, "emb_layer_norm_after"))
        state["esm.encoder.emb_layer_norm_after.weight"] = gamma
        state["esm.encoder.emb_layer_norm_after.bias"] = beta

        for name, array in group_weights(h5, "lm_head"):
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

    vocab_size, embed_dim = embedding.shape
    heads = attention_heads or max(1, embed_dim // HEAD_DIM)
    ffn = state["esm.encoder.layer.0.intermediate.dense.weight"].shape[0]
    config = ProtRNAConfig(
        num_layers=len(blocks), embed_dim=embed_dim, attention_heads=heads, ffn_embed_dim=ffn,
        vocab_size=vocab_size,
    )  # fmt: skip
    return config, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


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

