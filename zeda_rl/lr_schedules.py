"""Learning-rate schedules of the two adaptation stages."""

from __future__ import annotations

import math


def cosine_lr(step: int, total: int, peak: float, warmup_ratio: float) -> float:
    """Stage 1: linear warm-up over ``warmup_ratio`` of the steps, then cosine to 0
    (method.md 3)."""
    warmup = max(1, round(total * warmup_ratio))
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * _cosine_factor((step - warmup) / max(1, total - warmup))


def constant_then_cosine_lr(step: int, total: int, peak: float, decay_ratio: float) -> float:
    """Stage 2: the method's constant lr, then (``decay_ratio`` > 0) a cosine anneal over
    the last ``decay_ratio`` of the steps; the anneal's last step still gets a small lr,
    so no rollout is spent on a step that cannot move the weights."""
    decay = round(total * decay_ratio)
    start = total - decay
    if decay == 0 or step < start:
        return peak
    return peak * _cosine_factor((step - start + 1) / (decay + 1))


def _cosine_factor(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))
