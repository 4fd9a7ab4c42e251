"""Conversion that checks itself: every tensor of the .h5 used, the saved directory reloaded and
compared bit for bit (config, tensors, probe outputs) before it appears. Real HDF5 files made with
h5py from the parity fixtures; real safetensors directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from protrna import ProtRNA
from protrna.heads.ss import RotaFormer
from protrna.weights.convert import (
    ConversionError,
    convert_h5,
    fingerprint,
    load_h5,
    probe_outputs,
    verify_saved,
)
from protrna.weights.keras_h5 import KerasFormatError

FIXTURES = {"lm": "lm_tiny.h5", "ss_head": "sshead_tiny.h5"}
# A group of each file that holds datasets directly (a dataset added there is unlisted in weight_names).
GROUP_OF = {"lm": "embedding", "ss_head": "conv2d"}


def copy_with_extra_tensor(source: Path, target: Path, where: str, group: str) -> str:
    """Copy a Keras weight file and add one float32 dataset; return its HDF5 path.

    ``where="new_group"``: in a top-level group that ``layer_names`` does not list;
    ``where="unlisted"``: inside an existing group, but missing from its ``weight_names``.
    """
    shutil.copy(source, target)
    with h5py.File(target, "a") as h5:
        parent = h5.create_group("optimizer_weights") if where == "new_group" else h5[group]
        dataset = parent.create_dataset("extra/kernel:0", data=np.ones((3, 2), dtype=np.float32))
        return dataset.name


def no_leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("kind", ["lm", "ss_head"])
def test_conversion_is_checked_and_passes_on_the_fixtures(kind, parity_dir, tmp_path):
    out = convert_h5(parity_dir / FIXTURES[kind], tmp_path / "converted")
    assert no_leftovers(tmp_path) == ["converted"]  # no temporary sibling left
    direct = load_h5(parity_dir / FIXTURES[kind])
    model_class = ProtRNA if kind == "lm" else RotaFormer
    reloaded = model_class.from_pretrained(out)
    assert torch.equal(probe_outputs(reloaded), probe_outputs(direct))
    source = json.loads((out / "protrna_source.json").read_text())
    assert source["kind"] == kind and source["source"] == str((parity_dir / FIXTURES[kind]).resolve())


@pytest.mark.parametrize("where", ["new_group", "unlisted"])
@pytest.mark.parametrize("kind", ["lm", "ss_head"])
def test_a_tensor_the_conversion_would_not_use_is_refused_by_name(kind, where, parity_dir, tmp_path):
    h5_path = tmp_path / f"extra_{kind}.h5"
    extra = copy_with_extra_tensor(parity_dir / FIXTURES[kind], h5_path, where, GROUP_OF[kind])
    with pytest.raises(KerasFormatError, match=rf"1 tensor\(s\) of the file would not be used.*'{extra}'"):
        convert_h5(h5_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert no_leftovers(tmp_path) == [h5_path.name]
    with pytest.raises(KerasFormatError, match=extra):  # loading the file by path refuses it too
        load_h5(h5_path)


def test_a_rotary_constant_of_another_head_width_is_refused(parity_dir, tmp_path):
    path = tmp_path / "inv_freq.h5"
    shutil.copy(parity_dir / "lm_tiny.h5", path)
    with h5py.File(path, "a") as h5:
        block = h5["layer_._1"]
        (name,) = [str(n) for n in block.attrs["weight_names"] if "inv_freq" in str(n)]
        block[name][...] = block[name][...] * 1.001
    with pytest.raises(KerasFormatError, match="inv_freq of group 'layer_._1'.*64-wide"):
        load_h5(path)


def test_verify_saved_names_the_tensor_that_differs_between_two_directories(parity_dir, tmp_path):
    good = convert_h5(parity_dir / "sshead_tiny.h5", tmp_path / "good")
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    tensors = load_file(bad / "model.safetensors")
    name = "blocks.1.triangle_attention_ending.attention.gate.bias"
    tensors[name] = tensors[name].clone()
    tensors[name][3] += 1e-6  # one value, one ulp-sized change
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})

    reference = RotaFormer.from_pretrained(good)
    verify_saved(good, reference)  # the good copy passes
    with pytest.raises(ConversionError, match=rf"{bad}: tensor '{name}' reloads with other values"):
        verify_saved(bad, reference)
    with pytest.raises(ConversionError, match=f"tensor '{name}'"):
        verify_saved(bad, fingerprint(reference))  # a fingerprint works as the reference too


def test_verify_saved_compares_dtype_and_config(parity_dir, tmp_path):
    good = convert_h5(parity_dir / "sshead_tiny.h5", tmp_path / "good")
    reference = fingerprint(RotaFormer.from_pretrained(good))
    halved = tmp_path / "halved"
    shutil.copytree(good, halved)
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(good / "model.safetensors").items()},
              halved / "model.safetensors", metadata={"format": "pt"})  # fmt: skip
    with pytest.raises(ConversionError, match=r"reloads as torch.bfloat16 .* converted as torch.float32"):
        verify_saved(halved, reference)

    threshold = tmp_path / "threshold"
    shutil.copytree(good, threshold)
    config = json.loads((threshold / "config.json").read_text())
    config["threshold"] = 0.5
    (threshold / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=r"config does not reload as converted: threshold=0.5 \(converted: 0.25\)"):
        verify_saved(threshold, reference)


def test_verify_saved_reports_the_largest_probe_difference(parity_dir, tmp_path):
    """Tensors and ProtRNAConfig equal, outputs not: a transformers setting the config does not
    carry (here the LayerNorm epsilon) is caught by the probe."""
    good = convert_h5(parity_dir / "lm_tiny.h5", tmp_path / "good")
    edited = tmp_path / "edited"
    shutil.copytree(good, edited)
    config = json.loads((edited / "config.json").read_text())
    config["layer_norm_eps"] = 1e-1
    (edited / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=r"probe logits differ .*max abs difference [0-9.e-]+[1-9]"):
        verify_saved(edited, ProtRNA.from_pretrained(good))


@pytest.mark.parametrize("kind", ["lm", "ss_head"])
def test_a_directory_damaged_between_save_and_reload_is_refused_and_removed(kind, parity_dir, tmp_path, monkeypatch):
    model_class = ProtRNA if kind == "lm" else RotaFormer
    original_save = model_class.save_pretrained
    damaged = {}

    def save_then_damage(self, directory):
        original_save(self, directory)
        tensors = load_file(Path(directory) / "model.safetensors")
        name = sorted(tensors)[len(tensors) // 2]
        tensors[name] = tensors[name] + 1.0
        save_file(tensors, Path(directory) / "model.safetensors", metadata={"format": "pt"})
        damaged["name"] = name

    monkeypatch.setattr(model_class, "save_pretrained", save_then_damage)
    with pytest.raises(ConversionError, match="reloads with other values") as raised:
        convert_h5(parity_dir / FIXTURES[kind], tmp_path / "out")
    # Named as in the model's state dict (the language model's keys start with "lm.").
    assert f"{damaged['name']}' reloads" in str(raised.value) and str(tmp_path / "out") in str(raised.value)
    assert no_leftovers(tmp_path) == []  # neither the target nor the hidden temporary directory


def test_threshold_is_stored_with_a_head_and_refused_for_a_language_model(parity_dir, tmp_path):
    out = convert_h5(parity_dir / "sshead_tiny.h5", tmp_path / "head", threshold=0.14)
    assert RotaFormer.from_pretrained(out).config.threshold == 0.14
    with pytest.raises(ValueError, match="a threshold is for structure heads; this is a language model"):
        convert_h5(parity_dir / "lm_tiny.h5", tmp_path / "lm", threshold=0.14)
    with pytest.raises(ValueError, match=r"threshold must lie in \(0, 1\), got 1.5"):
        convert_h5(parity_dir / "sshead_tiny.h5", tmp_path / "head2", threshold=1.5)
    assert no_leftovers(tmp_path) == ["head"]


@pytest.mark.slow
def test_a_language_model_of_the_released_width_reloads_bit_identical(tmp_path):
    """The parity fixture is 128 wide with 2 heads; the released model is 1280 wide with 20 heads,
    where other matmul and attention kernels run: the check must pass there too (one block)."""
    from protrna import ProtRNAConfig
    from protrna.model import zero_contact_head

    torch.manual_seed(0)
    model = ProtRNA(ProtRNAConfig(num_layers=1)).eval()
    zero_contact_head(model.lm)
    expected = fingerprint(model)
    model.save_pretrained(tmp_path / "lm")
    verify_saved(tmp_path / "lm", expected)
