"""Task heads: config checks, pooling and the save/load round trip shared with RotaFormer."""

import json

import pytest
import torch

from protrna.heads.ss import RotaFormer, RotaFormerConfig
from protrna.heads.task import TaskHead, TaskHeadConfig, pool


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="task must be one of"):
        TaskHeadConfig("clustering", input_dim=4)
    with pytest.raises(ValueError, match="at least 2 classes"):
        TaskHeadConfig("classification", input_dim=4, labels=["only"])
    with pytest.raises(ValueError, match="target_std"):
        TaskHeadConfig("regression", input_dim=4, target_std=0.0)


def test_mean_pool_ignores_bos_eos_and_padding():
    hidden = torch.randn(2, 6, 3)
    lengths = torch.tensor([4, 2])
    pooled = pool(hidden, lengths, "mean")
    assert torch.allclose(pooled[0], hidden[0, 1:5].mean(0))
    assert torch.allclose(pooled[1], hidden[1, 1:3].mean(0))
    assert torch.equal(pool(hidden, lengths, "bos"), hidden[:, 0])


@pytest.mark.parametrize("hidden_dim", [0, 16])
def test_save_and_load_round_trip(tmp_path, hidden_dim):
    config = TaskHeadConfig("regression", input_dim=8, hidden_dim=hidden_dim, target_mean=2.5, target_std=0.5)
    head = TaskHead(config).eval()
    features = torch.randn(3, 8)
    head.save_pretrained(tmp_path / "head")
    again = TaskHead.from_pretrained(tmp_path / "head")
    assert again.config == config and not again.training
    assert torch.equal(again(features), head(features))
    assert TaskHead.from_pretrained(tmp_path / "head", dtype=torch.bfloat16).layers[-1].weight.dtype == torch.bfloat16


def test_load_ignores_config_keys_from_newer_versions(tmp_path):
    TaskHead(TaskHeadConfig("classification", input_dim=4, labels=["a", "b"])).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"added_later": True}))
    assert TaskHead.from_pretrained(tmp_path).config.labels == ["a", "b"]


def test_heads_refuse_each_others_directories(tmp_path):
    TaskHead(TaskHeadConfig("classification", input_dim=4, labels=["a", "b"])).save_pretrained(tmp_path / "task")
    RotaFormer(RotaFormerConfig(input_dim=4, num_blocks=1)).save_pretrained(tmp_path / "ss")
    with pytest.raises(ValueError, match="not a RotaFormer head directory"):
        RotaFormer.from_pretrained(tmp_path / "task")
    with pytest.raises(ValueError, match="not a fine-tuned task head directory"):
        TaskHead.from_pretrained(tmp_path / "ss")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        TaskHead.from_pretrained(tmp_path / "missing")
