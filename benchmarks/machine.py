"""What a benchmark ran on, in one line for its JSON and its table: the CPU model and its vector
extensions (the head's and the language model's speed depend on AVX-512 / BF16 / AMX more than on
anything else), cores, GPU, torch version and threads."""

from __future__ import annotations

import os
import platform
from pathlib import Path

#: CPU flags that decide which kernels oneDNN and the fused head kernels can use.
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def describe_cpu() -> str:
    """The CPU model, its vector extensions and cores; no torch needed (the original
    TensorFlow code's benchmark runs in an environment without it)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    flags = [flag for flag in VECTOR_FLAGS if f" {flag}" in text]
    return f"{cpu} ({', '.join(flags) or 'no AVX2'}), {os.cpu_count()} cores"


def describe(device: str = "cpu") -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(device)
    else:
        gpu = "no GPU" if not torch.cuda.is_available() else f"GPU unused ({torch.cuda.get_device_name()})"
    return f"{describe_cpu()}, {gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"
