"""Devices for the tests of inference paths that must hold on a GPU too.

Without a GPU the CUDA cases skip: CI has none. Run them where there is one with
``benchmarks/run_gpu.sh``; what a lent NVIDIA H200 made of them is in BENCHMARKS.md ("On a GPU").
"""

import pytest
import torch

NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

DEVICES = ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)]
