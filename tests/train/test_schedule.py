import math

import pytest

from protrna.train.schedule import warmup_cosine_lr


def lr(step):
    return warmup_cosine_lr(step, max_lr=1e-3, warmup_steps=10, max_steps=110, min_lr=1e-4)


def test_linear_warmup_to_the_peak():
    assert lr(0) == pytest.approx(1e-4)
    assert lr(4) == pytest.approx(5e-4)
    assert lr(9) == pytest.approx(1e-3)


def test_cosine_decay_to_the_floor():
    assert lr(10) == pytest.approx(1e-3)
    assert lr(60) == pytest.approx((1e-3 + 1e-4) / 2)  # half-way down the cosine
    assert lr(110) == pytest.approx(1e-4) and lr(500) == pytest.approx(1e-4)
    decay = [lr(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_no_warmup():
    assert warmup_cosine_lr(0, max_lr=2.0, warmup_steps=0, max_steps=4) == 2.0
    assert warmup_cosine_lr(2, max_lr=2.0, warmup_steps=0, max_steps=4) == pytest.approx(1.0)
    assert math.isclose(warmup_cosine_lr(4, max_lr=2.0, warmup_steps=0, max_steps=4), 0.0)
