"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

A plain function of the step rather than a ``torch.optim.lr_scheduler`` object: the step number
is the schedule's whole state, so a resumed run cannot drift from an uninterrupted one, and
there is no scheduler for ``accelerate`` to step once per process.
"""

from __future__ import annotations

import math


def warmup_cosine_lr(
    step: int, *, max_lr: float, warmup_steps: int, max_steps: int, min_lr: float = 0.0
) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Rises linearly from ``max_lr / warmup_steps`` to ``max_lr`` over ``warmup_steps`` steps,
    then follows half a cosine down to ``min_lr`` at ``max_steps``; stays there after.

    >>> [round(warmup_cosine_lr(s, max_lr=1.0, warmup_steps=2, max_steps=6), 3) for s in range(7)]
    [0.5, 1.0, 1.0, 0.854, 0.5, 0.146, 0.0]
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)
