"""Devices for the tests of inference paths that must hold on a GPU too.

Without a GPU the CUDA cases skip: CI has none. They were run on a lent NVIDIA H200 (BENCHMARKS.md,
"On a GPU").
"""

import pytest
import torch

NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

DEVICES = ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)]
