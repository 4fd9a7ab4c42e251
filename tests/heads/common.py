"""What the RotaFormer tests share: a tiny config, random weights, and the two ways to run."""

from __future__ import annotations

import torch

from protrna.heads.rotaformer import RotaFormerConfig

TINY = RotaFormerConfig(input_dim=12, single_dim=24, pair_dim=16, num_blocks=2, msa_heads=3, pair_heads=2,
                        head_width=8, outer_dim=4, max_relative_distance=3)  # fmt: skip


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values everywhere, LayerNorm scales and offsets included (defaults hide bugs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return module.eval()


def run(module, *args, grad: bool = False, **kwargs):
    """Call with autograd off (the in-place execution path) or on (the plain maths)."""
    context = torch.enable_grad() if grad else torch.inference_mode()
    with context:
        out = module(*args, **kwargs)
    return tuple(t.detach().clone() for t in out) if isinstance(out, tuple) else out.detach().clone()


def copy_of(head, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """A copy of ``head`` on ``device`` in ``dtype`` (module-scoped fixtures stay as they are)."""
    copy = type(head)(head.config)
    copy.load_state_dict(head.state_dict())
    return copy.to(device=device, dtype=dtype).eval()
