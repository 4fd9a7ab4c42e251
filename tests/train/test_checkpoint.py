import random

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from torch import nn

from protrna.train.checkpoint import (
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)


def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_random_states_round_trip():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = capture_rng()
    expected = draws()
    draws()
    restore_rng(state)
    assert draws() == expected


def small_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    model[0].requires_grad_(False)  # frozen: not saved
    return model


def trained(steps=3):
    model = small_model()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(steps):
        model(torch.randn(8, 4)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def test_save_load_round_trip_and_only_trainable_weights(tmp_path):
    accelerator = Accelerator(cpu=True)
    model, optimizer = trained()
    path = save_checkpoint(accelerator, tmp_path, 3, model, optimizer, {"position": 7}, {"note": "x"})
    saved = torch.load(path / "trainer.pt", weights_only=True)
    assert set(saved["model"]) == {"1.weight", "1.bias"}

    fresh = small_model()
    fresh_optimizer = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=0.1)
    step, data, facts = load_checkpoint(accelerator, path, fresh, fresh_optimizer)
    assert (step, data, facts) == (3, {"position": 7}, {"note": "x"})
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    # The optimizer continues identically.
    x = torch.randn(8, 4)
    for m, o in ((model, optimizer), (fresh, fresh_optimizer)):
        m(x).pow(2).mean().backward()
        o.step()
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_latest_is_the_highest_complete_step_and_old_ones_are_pruned(tmp_path):
    accelerator = Accelerator(cpu=True)
    model, optimizer = trained(1)
    for step in (2, 4, 6):
        save_checkpoint(accelerator, tmp_path, step, model, optimizer, None, keep=2)
    (tmp_path / "checkpoints" / ".tmp-step_00000008").mkdir()  # an interrupted save
    assert latest_checkpoint(tmp_path).name == "step_00000006"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        ".tmp-step_00000008",
        "step_00000004",
        "step_00000006",
    ]


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_latest(tmp_path):
    accelerator = Accelerator(cpu=True)
    model, optimizer = trained(1)
    save_checkpoint(accelerator, tmp_path, 2, model, optimizer, {"ok": 1})
    # A data state torch.save cannot write: the save dies after trainer.pt, before the rename.
    with pytest.raises(TypeError, match="pickle"):
        save_checkpoint(accelerator, tmp_path, 4, model, optimizer, {"bad": (n for n in range(3))})
    assert latest_checkpoint(tmp_path).name == "step_00000002"
    assert (tmp_path / "checkpoints" / ".tmp-step_00000004" / "trainer.pt").exists()
    step, data, _ = load_checkpoint(accelerator, latest_checkpoint(tmp_path), model, optimizer)
    assert (step, data) == (2, {"ok": 1})
    # The next save clears the leftover.
    save_checkpoint(accelerator, tmp_path, 6, model, optimizer, None)
    assert not (tmp_path / "checkpoints" / ".tmp-step_00000004").exists()


def test_loading_into_a_differently_frozen_model_is_refused(tmp_path):
    accelerator = Accelerator(cpu=True)
    model, optimizer = trained(1)
    path = save_checkpoint(accelerator, tmp_path, 1, model, optimizer, None)
    other = small_model().requires_grad_(True)
    with pytest.raises(ValueError, match="same model and freezing"):
        load_checkpoint(accelerator, path, other, torch.optim.AdamW(other.parameters()))
