"""Schedule of the Batch Renormalization clip bounds ``r_max`` and ``d_max`` over training.

The schedule is a pure function of the optimizer step (not of a count of forward passes, which
drifts under gradient accumulation or extra train-mode forwards). Following Ioffe (2017): plain
batch norm (``r_max = 1``, ``d_max = 0``) during a warm-up, then ``r_max`` relaxed linearly to its
final value and ``d_max`` likewise, each by its own ramp end, and constant afterwards. The defaults
(:class:`RenormSchedule`'s fields) are the ones training uses.

Typical use, once per optimizer step::

    r_max, d_max = renorm_limits(step, total_steps)
    apply_renorm_limits(model, r_max, d_max)
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

from torch import nn

from model.batchrenorm import BatchRenorm1d

__all__ = ["DEFAULT_SCHEDULE", "RenormSchedule", "apply_renorm_limits", "renorm_limits"]


def _check_final_limits(r_max_final: float, d_max_final: float) -> None:
    """Raise ``ValueError`` unless ``1 <= r_max_final < inf`` and ``0 <= d_max_final < inf``."""
    if not (math.isfinite(r_max_final) and r_max_final >= 1.0):
        raise ValueError(f"r_max_final must be a finite number >= 1 (got {r_max_final})")
    if not (math.isfinite(d_max_final) and d_max_final >= 0.0):
        raise ValueError(f"d_max_final must be a finite number >= 0 (got {d_max_final})")


def _check_fractions(warmup_fraction: float, r_ramp_end_fraction: float, d_ramp_end_fraction: float) -> None:
    """Raise ``ValueError`` unless ``0 <= warmup_fraction <= ramp end <= 1`` for both ramps."""
    if not 0.0 <= warmup_fraction <= 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1] (got {warmup_fraction})")
    for name, end in (
        ("r_ramp_end_fraction", r_ramp_end_fraction),
        ("d_ramp_end_fraction", d_ramp_end_fraction),
    ):
        if not warmup_fraction <= end <= 1.0:
            raise ValueError(f"{name} must be in [warmup_fraction={warmup_fraction}, 1] (got {end})")


def _as_step(value: int, name: str) -> int:
    """Return ``value`` as an ``int``; raise ``ValueError`` for a bool or a non-integer."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer (got {value!r})")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer (got {value!r})") from None


def _ramp(step: int, start: float, end: float) -> float:
    """Progress in [0, 1] of ``step`` along a linear ramp from ``start`` to ``end`` (in steps)."""
    if step >= end:
        return 1.0
    if step <= start:
        return 0.0
    return (step - start) / (end - start)


@dataclass(frozen=True)
class RenormSchedule:
    """The clip-bound schedule with its settings, validated on creation; its defaults are THE defaults.

    Training's config keys ``brn_*`` (:class:`training.config.TrainConfig`) default to these fields,
    so this class is the one place the schedule's defaults are written. They are a shorter warm-up and
    later ramp ends than the paper's 5k / 40k / 25k of 160k steps (pass
    ``warmup_fraction=5/160, r_ramp_end_fraction=40/160, d_ramp_end_fraction=25/160`` for those).

    Example::

        schedule = RenormSchedule(warmup_fraction=0.05)
        r_max, d_max = schedule(step, total_steps)

    Attributes:
        warmup_fraction: fraction of the run trained as plain batch norm, in [0, 1].
        r_max_final: final ``r_max`` (finite, >= 1).
        d_max_final: final ``d_max`` (finite, >= 0).
        r_ramp_end_fraction: fraction of the run at which ``r_max`` is final, in [warmup_fraction, 1].
        d_ramp_end_fraction: fraction of the run at which ``d_max`` is final, in [warmup_fraction, 1].
    """

    warmup_fraction: float = 0.1
    r_max_final: float = 3.0
    d_max_final: float = 5.0
    r_ramp_end_fraction: float = 0.5
    d_ramp_end_fraction: float = 0.4

    def __post_init__(self) -> None:
        """Validate the fractions and final values (``ValueError`` when out of range)."""
        _check_fractions(self.warmup_fraction, self.r_ramp_end_fraction, self.d_ramp_end_fraction)
        _check_final_limits(self.r_max_final, self.d_max_final)

    def __call__(self, step: int, total_steps: int) -> tuple[float, float]:
        """Return ``(r_max, d_max)`` for optimizer step ``step`` (from 0) of ``total_steps`` (> 0).

        Plain batch norm, ``(1.0, 0.0)``, until ``warmup_fraction * total_steps``; then ``r_max`` grows
        linearly from 1 to ``r_max_final`` at ``r_ramp_end_fraction * total_steps`` and ``d_max`` from 0
        to ``d_max_final`` at ``d_ramp_end_fraction * total_steps``; both stay at their final values
        after their ramp ends (also for ``step > total_steps``).

        Raises:
            ValueError: for a negative or non-integer ``step``, or a non-positive or non-integer
                ``total_steps``.
        """
        step = _as_step(step, "step")
        total_steps = _as_step(total_steps, "total_steps")
        if step < 0:
            raise ValueError(f"step must be >= 0 (got {step})")
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0 (got {total_steps})")
        warmup_end = self.warmup_fraction * total_steps
        r_progress = _ramp(step, warmup_end, self.r_ramp_end_fraction * total_steps)
        d_progress = _ramp(step, warmup_end, self.d_ramp_end_fraction * total_steps)
        return 1.0 + (self.r_max_final - 1.0) * r_progress, self.d_max_final * d_progress


DEFAULT_SCHEDULE = RenormSchedule()
"""The schedule training uses unless its config says otherwise."""


def renorm_limits(step: int, total_steps: int, **settings: float) -> tuple[float, float]:
    """Return ``(r_max, d_max)`` for optimizer step ``step`` of ``total_steps``: ``RenormSchedule(**settings)``.

    A pure function: the same arguments always give the same result.

    Args:
        step: the optimizer step, counted from 0.
        total_steps: the number of optimizer steps of the run (> 0).
        settings: :class:`RenormSchedule` fields that differ from its defaults (``warmup_fraction``,
            ``r_max_final``, ``d_max_final``, ``r_ramp_end_fraction``, ``d_ramp_end_fraction``).

    Raises:
        ValueError: for a negative or non-integer ``step``, a non-positive or non-integer
            ``total_steps``, or settings outside their ranges.
    """
    schedule = RenormSchedule(**settings) if settings else DEFAULT_SCHEDULE
    return schedule(step, total_steps)


def apply_renorm_limits(module: nn.Module, r_max: float, d_max: float) -> int:
    """Set ``r_max`` and ``d_max`` on every :class:`~model.batchrenorm.BatchRenorm1d` in ``module``.

    Args:
        module: a model (``module`` itself is included when it is a ``BatchRenorm1d``).
        r_max: the new ``r_max`` (>= 1; ``inf`` disables the clipping of ``r``).
        d_max: the new ``d_max`` (>= 0; ``inf`` disables the clipping of ``d``).

    Returns:
        The number of layers updated (0 when the model has no ``BatchRenorm1d``).

    Raises:
        ValueError: when ``r_max`` or ``d_max`` is out of range (no layer is changed then).
    """
    if not r_max >= 1.0:
        raise ValueError(f"r_max must be >= 1 (got {r_max})")
    if not d_max >= 0.0:
        raise ValueError(f"d_max must be >= 0 (got {d_max})")
    r_max, d_max = float(r_max), float(d_max)
    count = 0
    for layer in module.modules():
        if isinstance(layer, BatchRenorm1d):
            layer.r_max = r_max
            layer.d_max = d_max
            count += 1
    return count
