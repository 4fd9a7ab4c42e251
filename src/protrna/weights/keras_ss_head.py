"""Import of the original RotaFormer head (``ssHead_RF_bprna.h5``) into :class:`RotaFormer`.

The file is a legacy Keras ``save_weights`` h5 with top-level groups ``conv2d``,
``aa_embedding`` and ``evoformer_ensemble_{0,1,2}``; dataset names carry the TensorFlow module
path, e.g. ``evoformer_iteration_5/triangle_attention_starting_node/attention/query_w:0``.
Quirks handled here and nowhere else:

* Keras appends numeric suffixes that depend on what the saving process had built before
  (``conv2d_1``, ``aa_embedding_1``, ``ss_prediction_model_1/conv2d_1/kernel:0``). Groups are
  matched by prefix, blocks by the ``evoformer_iteration_<k>`` index inside dataset names, and
  any other ``_<digits>`` suffix on a path component is dropped before the table lookup.
* The number of blocks and every width are read from the file (the fixture has 2 blocks).
* Keras dense kernels are (in, out), attention kernels (in, heads, width) and (heads, width,
  out), the conv kernel (height, width, in, out): the table says how each becomes a torch tensor.
* Every dataset of the file must be used; one that no table entry takes is an error naming it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..heads.ss import RotaFormer, RotaFormerConfig
from .keras_h5 import KerasFormatError, KerasWeightFile

Transform = Callable[[np.ndarray], np.ndarray]
Entry = tuple[str, str, Transform]  # (Keras sub-path without ":0", torch parameter, transform)


class SSHeadFormatError(KerasFormatError):
    """The file is not an original-layout RotaFormer head (``ssHead_RF_bprna.h5``)."""


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _transpose(a: np.ndarray) -> np.ndarray:
    return a.T


def _heads_in(a: np.ndarray) -> np.ndarray:
    """(in, heads, width) => (heads * width, in), the ``nn.Linear`` weight."""
    return a.reshape(a.shape[0], -1).T


def _heads_out(a: np.ndarray) -> np.ndarray:
    """(heads, width, out) or (outer, outer, out) => (out, heads * width)."""
    return a.reshape(-1, a.shape[-1]).T


def _flatten(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1)


def _conv_kernel(a: np.ndarray) -> np.ndarray:
    """(height, width, in, out) => (out, in, height, width)."""
    return a.transpose(3, 2, 0, 1)


def _linear(keras: str, torch_name: str) -> list[Entry]:
    return [(f"{keras}/weights", f"{torch_name}.weight", _transpose), (f"{keras}/bias", f"{torch_name}.bias", _same)]


def _layer_norm(keras: str, torch_name: str) -> list[Entry]:
    return [(f"{keras}/scale", f"{torch_name}.weight", _same), (f"{keras}/offset", f"{torch_name}.bias", _same)]


def _attention(keras: str, torch_name: str) -> list[Entry]:
    a, t = f"{keras}/attention", f"{torch_name}.attention"
    return [
        (f"{a}/query_w", f"{t}.query.weight", _heads_in),
        (f"{a}/key_w", f"{t}.key.weight", _heads_in),
        (f"{a}/value_w", f"{t}.value.weight", _heads_in),
        (f"{a}/gating_w", f"{t}.gate.weight", _heads_in),
        (f"{a}/gating_b", f"{t}.gate.bias", _flatten),
        (f"{a}/output_w", f"{t}.output.weight", _heads_out),
        (f"{a}/output_b", f"{t}.output.bias", _same),
        (f"{keras}/feat_2d_weights", f"{torch_name}.pair_bias.weight", _transpose),
    ]


def _transition(keras: str, torch_name: str) -> list[Entry]:
    return [
        *_layer_norm(f"{keras}/input_layer_norm", f"{torch_name}.norm"),
        *_linear(f"{keras}/transition1", f"{torch_name}.expand"),
        *_linear(f"{keras}/transition2", f"{torch_name}.contract"),
    ]


def _triangle_multiplication(keras: str, torch_name: str) -> list[Entry]:
    return [
        *_layer_norm(f"{keras}/layer_norm_input", f"{torch_name}.norm"),
        *_linear(f"{keras}/left_projection", f"{torch_name}.left"),
        *_linear(f"{keras}/right_projection", f"{torch_name}.right"),
        *_linear(f"{keras}/left_gate", f"{torch_name}.left_gate"),
        *_linear(f"{keras}/right_gate", f"{torch_name}.right_gate"),
        *_layer_norm(f"{keras}/center_layer_norm", f"{torch_name}.center_norm"),
        *_linear(f"{keras}/output_projection", f"{torch_name}.output"),
        *_linear(f"{keras}/gating_linear", f"{torch_name}.gate"),
    ]


#: One Evoformer block: path below ``evoformer_iteration_<k>/`` => name below ``blocks.<k>.``.
BLOCK_TABLE: tuple[Entry, ...] = (
    *_layer_norm("msa_row_attention_with_pair_bias/query_norm", "row_attention.norm"),
    *_layer_norm("msa_row_attention_with_pair_bias/feat_2d_norm", "row_attention.pair_norm"),
    *_attention("msa_row_attention_with_pair_bias", "row_attention"),
    *_transition("msa_transition", "single_transition"),
    *_layer_norm("outer_product_mean/layer_norm_input", "outer_product_mean.norm"),
    *_linear("outer_product_mean/left_projection", "outer_product_mean.left"),
    *_linear("outer_product_mean/right_projection", "outer_product_mean.right"),
    ("outer_product_mean/output_w", "outer_product_mean.output.weight", _heads_out),
    ("outer_product_mean/output_b", "outer_product_mean.output.bias", _same),
    *_triangle_multiplication("triangle_multiplication_outgoing", "triangle_multiplication_outgoing"),
    *_triangle_multiplication("triangle_multiplication_incoming", "triangle_multiplication_incoming"),
    *_layer_norm("triangle_attention_starting_node/query_norm", "triangle_attention_starting.norm"),
    *_attention("triangle_attention_starting_node", "triangle_attention_starting"),
    *_layer_norm("triangle_attention_ending_node/query_norm", "triangle_attention_ending.norm"),
    *_attention("triangle_attention_ending_node", "triangle_attention_ending"),
    *_transition("pair_transition", "pair_transition"),
)

#: The ``aa_embedding`` group, by the last two path components.
EMBEDDING_TABLE: tuple[Entry, ...] = (
    *_linear("preprocess_1d", "embedding.single"),
    *_linear("left_single", "embedding.left"),
    *_linear("right_single", "embedding.right"),
    *_linear("pair_activiations", "embedding.relative_position"),  # sic, the original's spelling
)

#: The ``conv2d`` group, by the last path component.
CONV_TABLE: tuple[Entry, ...] = (
    ("kernel", "conv.weight", _conv_kernel),
    ("bias", "conv.bias", _same),
)

_ITERATION = re.compile(r"(?:^|/)evoformer_iteration_(\d+)/(.+)$")
_KERAS_SUFFIX = re.compile(r"_\d+$")


def _clean(path: str) -> str:
    """Drop ``:0`` and Keras' ``_<n>`` uniquifying suffixes from every path component."""
    path = re.sub(r":\d+$", "", path)
    return "/".join(_KERAS_SUFFIX.sub("", part) for part in path.split("/"))


def _one_group(path: Path, groups: list[str], prefix: str) -> str:
    found = [g for g in groups if g.startswith(prefix)]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({found})"
        hint = (
            " It looks like a ProtRNA language-model file: load it with protrna.weights.keras_h5.load_lm_h5."
            if any(g.startswith("layer_._") for g in groups)
            else ""
        )
        raise SSHeadFormatError(
            f"{path}: {what} top-level group starting with {prefix!r}; a RotaFormer head file has one "
            f"(groups: {groups[:8]}).{hint}"
        )
    return found[0]


def read_ss_head_state_dict(path: str | Path) -> tuple[RotaFormerConfig, dict[str, torch.Tensor]]:
    """Config and ``RotaFormer`` state dict of an original-layout head file of any depth; every
    dataset of the file must be used."""
    path = Path(path)
    try:
        weight_file = KerasWeightFile(path)
    except KerasFormatError as error:
        raise SSHeadFormatError(str(error)) from None
    with weight_file as h5:
        groups = h5.layer_names()
        state: dict[str, np.ndarray] = {}

        def put(name: str, array: np.ndarray, keras_name: str) -> None:
            if name in state:
                raise SSHeadFormatError(f"{path}: two datasets map to {name!r} (the second is {keras_name!r})")
            state[name] = array

        for table, group, key_parts in (
            (EMBEDDING_TABLE, _one_group(path, groups, "aa_embedding"), 2),
            (CONV_TABLE, _one_group(path, groups, "conv2d"), 1),
        ):
            lookup = {keras: (target, transform) for keras, target, transform in table}
            for name, array in h5.group_weights(group):
                key = "/".join(_clean(name).split("/")[-key_parts:])
                if key not in lookup:
                    raise SSHeadFormatError(f"{path}: unexpected weight {name!r} in group {group!r}")
                target, transform = lookup[key]
                put(target, transform(array), name)

        block_lookup = {keras: (target, transform) for keras, target, transform in BLOCK_TABLE}
        ensembles = [g for g in groups if g.startswith("evoformer_ensemble")]
        if not ensembles:
            raise SSHeadFormatError(f"{path}: no 'evoformer_ensemble*' groups (groups: {groups[:8]})")
        blocks: set[int] = set()
        for group in ensembles:
            for name, array in h5.group_weights(group):
                match = _ITERATION.search(name)
                if not match:
                    raise SSHeadFormatError(f"{path}: {name!r} in group {group!r} names no evoformer_iteration_<k>")
                index, sub_path = int(match.group(1)), _clean(match.group(2))
                if sub_path not in block_lookup:
                    raise SSHeadFormatError(f"{path}: unexpected weight {name!r} in group {group!r}")
                target, transform = block_lookup[sub_path]
                put(f"blocks.{index}.{target}", transform(array), name)
                blocks.add(index)
        try:
            h5.require_all_used()
        except KerasFormatError as error:
            raise SSHeadFormatError(str(error)) from None

    num_blocks = len(blocks)
    if sorted(blocks) != list(range(num_blocks)):
        raise SSHeadFormatError(f"{path}: Evoformer blocks are not numbered 0..{num_blocks - 1}: {sorted(blocks)}")
    expected = [t for _, t, _ in EMBEDDING_TABLE + CONV_TABLE]
    expected += [f"blocks.{k}.{t}" for k in range(num_blocks) for _, t, _ in BLOCK_TABLE]
    missing = [name for name in expected if name not in state]
    if missing:
        raise SSHeadFormatError(f"{path}: {len(missing)} weights missing, e.g. {missing[:5]}")

    query = state["blocks.0.row_attention.attention.query.weight"]
    pair_query = state["blocks.0.triangle_attention_starting.attention.query.weight"]
    msa_heads = state["blocks.0.row_attention.pair_bias.weight"].shape[0]
    pair_heads = state["blocks.0.triangle_attention_starting.pair_bias.weight"].shape[0]
    single_dim, input_dim = state["embedding.single.weight"].shape
    config = RotaFormerConfig(
        input_dim=input_dim,
        single_dim=single_dim,
        pair_dim=state["embedding.left.weight"].shape[0],
        num_blocks=num_blocks,
        msa_heads=msa_heads,
        pair_heads=pair_heads,
        head_width=query.shape[0] // msa_heads,
        outer_dim=state["blocks.0.outer_product_mean.left.weight"].shape[0],
        transition_factor=state["blocks.0.pair_transition.expand.weight"].shape[0]
        // state["blocks.0.pair_transition.expand.weight"].shape[1],
        max_relative_distance=(state["embedding.relative_position.weight"].shape[1] - 1) // 2,
        conv_kernel=state["conv.weight"].shape[-1],
    )
    if pair_query.shape[0] != pair_heads * config.head_width:
        raise SSHeadFormatError(f"{path}: triangle and row attention heads have different widths")
    return config, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def load_ss_head_h5(path: str | Path) -> RotaFormer:
    """A :class:`RotaFormer` (float32, eval mode) with the weights of an original-layout h5 file.

    The decision threshold is not in the file; it keeps the released head's 0.25.
    """
    config, state = read_ss_head_state_dict(path)
    head = RotaFormer(config)
    try:
        head.load_state_dict(state)
    except RuntimeError as error:  # shapes that disagree with the widths read from the file
        raise SSHeadFormatError(f"{path}: weights do not fit one RotaFormer: {error}") from None
    return head.eval()
