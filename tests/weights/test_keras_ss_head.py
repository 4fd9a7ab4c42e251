"""Import of the original RotaFormer head file (legacy Keras h5) and its failure modes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import torch

from protrna.heads import RotaFormer, RotaFormerConfig
from protrna.weights.keras_h5 import KerasFormatError
from protrna.weights.keras_ss_head import (
    BLOCK_TABLE,
    CONV_TABLE,
    EMBEDDING_TABLE,
    SSHeadFormatError,
    load_ss_head_h5,
    read_ss_head_state_dict,
)


def rewrite(source: Path, target: Path, group_name: Callable[[str], str | None] = lambda g: g,
            dataset_name: Callable[[str], str | None] = lambda d: d, reverse: bool = False) -> Path:
    """Copy a Keras weight file, renaming groups and datasets (None drops one) and optionally
    reversing each group's ``weight_names`` order, as another saving process might."""
    with h5py.File(source, "r") as src, h5py.File(target, "w") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        kept_groups = []
        for group in [g.decode() if isinstance(g, bytes) else g for g in src.attrs["layer_names"]]:
            new_group = group_name(group)
            if new_group is None:
                continue
            kept_groups.append(new_group)
            out = dst.create_group(new_group)
            names = []
            for name in [n.decode() if isinstance(n, bytes) else n for n in src[group].attrs["weight_names"]]:
                new_name = dataset_name(name)
                if new_name is not None:
                    out.create_dataset(new_name, data=np.asarray(src[group][name]))
                    names.append(new_name)
            out.attrs["weight_names"] = [n.encode() for n in (names[::-1] if reverse else names)]
        dst.attrs["layer_names"] = [g.encode() for g in kept_groups]
    return target


@pytest.fixture(scope="module")
def fixture_h5(parity_dir) -> Path:
    return parity_dir / "sshead_tiny.h5"


def test_reads_the_shape_from_the_file(fixture_h5):
    config, state = read_ss_head_state_dict(fixture_h5)
    assert config == RotaFormerConfig(num_blocks=2)  # released widths, two blocks
    assert state["conv.weight"].shape == (1, 128, 5, 5)
    assert state["blocks.1.row_attention.attention.query.weight"].shape == (256, 256)


def test_tables_cover_every_parameter_exactly_once():
    targets = [t for _, t, _ in EMBEDDING_TABLE + CONV_TABLE]
    targets += [f"blocks.0.{t}" for _, t, _ in BLOCK_TABLE]
    assert len(targets) == len(set(targets))
    assert set(targets) == set(RotaFormer(RotaFormerConfig(num_blocks=1)).state_dict())


def test_keras_suffixes_and_weight_order_do_not_matter(fixture_h5, tmp_path):
    """A head saved as the second model of a process: ``conv2d_1``, ``aa_embedding_1``,
    ``ss_prediction_model_1/...`` and suffixed sub-modules, weights listed in another order."""

    def dataset_name(name: str) -> str:
        name = name.replace("ss_prediction_model/conv2d/", "ss_prediction_model_1/conv2d_1/")
        name = re.sub(r"^evoformer_iteration_(\d+)/", r"evoformer_ensemble_0_1/evoformer_iteration_\1/", name)
        return name.replace("/attention/", "/attention_3/").replace("/query_norm/", "/query_norm_1/")

    renamed = rewrite(fixture_h5, tmp_path / "suffixed.h5", group_name=lambda g: g + "_1",
                      dataset_name=dataset_name, reverse=True)  # fmt: skip
    _, expected = read_ss_head_state_dict(fixture_h5)
    config, state = read_ss_head_state_dict(renamed)
    assert config.num_blocks == 2 and state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name


def test_clear_error_for_a_file_that_is_not_hdf5(tmp_path):
    path = tmp_path / "ssHead_RF_bprna.h5"
    path.write_text("<html>Zenodo is down</html>")
    with pytest.raises(SSHeadFormatError, match=f"{re.escape(str(path))}: not an HDF5 file"):
        load_ss_head_h5(path)
    with pytest.raises(FileNotFoundError):
        load_ss_head_h5(tmp_path / "missing.h5")


def test_clear_error_for_the_language_model_file(parity_dir):
    with pytest.raises(SSHeadFormatError, match="aa_embedding.*language-model file") as error:
        load_ss_head_h5(parity_dir / "lm_tiny.h5")
    assert isinstance(error.value, (KerasFormatError, ValueError))


def test_clear_error_for_missing_weights(fixture_h5, tmp_path):
    dropped = "evoformer_iteration_1/pair_transition/transition2/bias:0"
    path = rewrite(fixture_h5, tmp_path / "partial.h5", dataset_name=lambda n: None if n == dropped else n)
    with pytest.raises(SSHeadFormatError, match=r"1 weights missing.*blocks\.1\.pair_transition\.contract\.bias"):
        load_ss_head_h5(path)

    no_conv = rewrite(fixture_h5, tmp_path / "no_conv.h5", group_name=lambda g: None if g == "conv2d" else g)
    with pytest.raises(SSHeadFormatError, match="no top-level group starting with 'conv2d'"):
        load_ss_head_h5(no_conv)


def test_clear_error_for_gaps_in_block_numbers(fixture_h5, tmp_path):
    path = rewrite(fixture_h5, tmp_path / "gap.h5",
                   dataset_name=lambda n: n.replace("evoformer_iteration_1/", "evoformer_iteration_2/"))  # fmt: skip
    with pytest.raises(SSHeadFormatError, match=r"not numbered 0..1: \[0, 2\]"):
        load_ss_head_h5(path)
