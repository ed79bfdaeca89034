"""The learning-rate schedule: linear warm-up, then cosine decay, as a pure function of the optimizer step."""

from __future__ import annotations

import math


def learning_rate(
    step: int,
    total_steps: int,
    *,
    base_lr: float,
    warmup_fraction: float = 0.05,
    min_lr_ratio: float = 0.01,
) -> float:
    """The learning rate for optimizer step ``step`` (0-based) of a run of ``total_steps`` steps.

    The rate rises linearly from ``base_lr / warmup_steps`` to ``base_lr`` over the first
    ``warmup_steps = ceil(warmup_fraction * total_steps)`` steps, then follows a half cosine down to
    ``min_lr_ratio * base_lr`` at the last step. Steps past the end keep the final rate. Being a pure
    function of the step, a resumed run continues on exactly the same curve.

    Args:
        step: the optimizer step about to be taken (0-based).
        total_steps: the number of optimizer steps of the whole run (>= 1).
        base_lr: the peak learning rate.
        warmup_fraction: share of the run spent warming up, in [0, 1).
        min_lr_ratio: final rate as a fraction of ``base_lr``, in [0, 1].
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    warmup_steps = math.ceil(warmup_fraction * total_steps)
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, decay_steps - 1))
    floor = min_lr_ratio * base_lr
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
