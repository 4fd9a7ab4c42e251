"""Fixtures of the RotaFormer tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protrna import execution
from protrna.weights.keras_ss_head import load_ss_head_h5


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared CPU an OpenMP barrier
    waiting for a descheduled thread turns milliseconds into seconds. The chunk-thread path is
    tested explicitly (``head.chunk_threads``)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(params=["per-head", "fused"])
def attention_path(request, monkeypatch):
    """Attention as the CPU runs it (per head, a few rows at a time) or as GPUs run it (all heads
    in one ``scaled_dot_product_attention``), both here on the CPU."""
    monkeypatch.setattr(execution, "SDPA_ON_CPU", request.param == "fused")
    return request.param


@pytest.fixture(scope="module")
def parity(parity_dir):
    return load_ss_head_h5(parity_dir / "sshead_tiny.h5"), np.load(parity_dir / "sshead_tiny_expected.npz")
