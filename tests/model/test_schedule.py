"""Tests of :mod:`model.schedule`: the clip-bound schedule of Batch Renormalization."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from model.batchrenorm import BatchRenorm1d
from model.schedule import DEFAULT_SCHEDULE, RenormSchedule, apply_renorm_limits, renorm_limits

TOTAL = 160_000  # the paper's run: warm-up 5k, r_max final at 40k, d_max final at 25k
PAPER = {"warmup_fraction": 5 / 160, "r_ramp_end_fraction": 40 / 160, "d_ramp_end_fraction": 25 / 160}
"""Ioffe (2017)'s fractions; the defaults (what training uses) are longer."""


@pytest.mark.parametrize("step", [0, 1, 2_500, 4_999, 5_000])
def test_plain_batch_norm_during_warmup(step: int) -> None:
    assert renorm_limits(step, TOTAL, **PAPER) == (1.0, 0.0)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (13_750, (1.5, 2.1875)),  # a quarter of the r ramp, 43.75 % of the d ramp
        (15_000, (1 + 2 * 10_000 / 35_000, 2.5)),  # half of the d ramp
        (22_500, (2.0, 4.375)),  # half of the r ramp, 87.5 % of the d ramp
        (25_000, (1 + 2 * 20_000 / 35_000, 5.0)),
    ],
)
def test_linear_ramps(step: int, expected: tuple[float, float]) -> None:
    r_max, d_max = renorm_limits(step, TOTAL, **PAPER)
    assert r_max == pytest.approx(expected[0], rel=1e-12)
    assert d_max == pytest.approx(expected[1], rel=1e-12)


@pytest.mark.parametrize("step", [40_000, 100_000, TOTAL, 10 * TOTAL])
def test_final_values_after_the_ramps(step: int) -> None:
    assert renorm_limits(step, TOTAL, **PAPER) == (3.0, 5.0)


def test_custom_settings() -> None:
    kwargs = {
        "warmup_fraction": 0.1,
        "r_max_final": 2.0,
        "d_max_final": 1.0,
        "r_ramp_end_fraction": 0.5,
        "d_ramp_end_fraction": 0.3,
    }
    assert renorm_limits(10, 100, **kwargs) == (1.0, 0.0)
    assert renorm_limits(20, 100, **kwargs) == pytest.approx((1.25, 0.5))
    assert renorm_limits(30, 100, **kwargs) == pytest.approx((1.5, 1.0))
    assert renorm_limits(50, 100, **kwargs) == (2.0, 1.0)


def test_ramp_ending_at_the_warmup_jumps_to_the_final_value() -> None:
    kwargs = {"warmup_fraction": 0.2, "r_ramp_end_fraction": 0.2, "d_ramp_end_fraction": 0.2}
    assert renorm_limits(19, 100, **kwargs) == (1.0, 0.0)
    assert renorm_limits(20, 100, **kwargs) == (3.0, 5.0)


def test_monotonic_over_a_whole_run() -> None:
    values = [renorm_limits(step, 1_000) for step in range(1_100)]
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(values, values[1:], strict=False))
    assert values[0] == (1.0, 0.0) and values[-1] == (3.0, 5.0)


def test_pure_function_of_the_step() -> None:
    steps = [0, 7_000, 30_000, 5_000, 7_000, 200_000, 30_000]
    first = [renorm_limits(step, TOTAL, **PAPER) for step in steps]
    second = [renorm_limits(step, TOTAL, **PAPER) for step in reversed(steps)][::-1]
    assert first == second
    assert first[1] == first[4] and first[2] == first[6]


def test_accepts_numpy_integers() -> None:
    assert renorm_limits(np.int64(22_500), np.int32(TOTAL), **PAPER) == (2.0, 4.375)


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(1, 10**7),
    a=st.floats(0.0, 1.5),
    b=st.floats(0.0, 1.5),
    warmup=st.floats(0.0, 0.5),
    r_end=st.floats(0.0, 1.0),
    d_end=st.floats(0.0, 1.0),
    r_final=st.floats(1.0, 10.0),
    d_final=st.floats(0.0, 10.0),
)
def test_property_bounded_and_monotonic(
    total: int,
    a: float,
    b: float,
    warmup: float,
    r_end: float,
    d_end: float,
    r_final: float,
    d_final: float,
) -> None:
    schedule = RenormSchedule(
        warmup_fraction=warmup,
        r_max_final=r_final,
        d_max_final=d_final,
        r_ramp_end_fraction=max(warmup, r_end),
        d_ramp_end_fraction=max(warmup, d_end),
    )
    early, late = sorted((int(a * total), int(b * total)))
    r_early, d_early = schedule(early, total)
    r_late, d_late = schedule(late, total)
    assert 1.0 <= r_early <= r_late <= r_final
    assert 0.0 <= d_early <= d_late <= d_final
    if early < warmup * total:
        assert (r_early, d_early) == (1.0, 0.0)
    assert schedule(total, total) == pytest.approx((r_final, d_final), rel=1e-12)


def test_schedule_object_matches_function_and_is_frozen() -> None:
    schedule = RenormSchedule(**PAPER)
    for step in (0, 6_000, 20_000, 50_000):
        assert schedule(step, TOTAL) == renorm_limits(step, TOTAL, **PAPER)
    assert RenormSchedule() == DEFAULT_SCHEDULE
    for step in (0, 16_000, 20_000, 64_000, 100_000):
        assert renorm_limits(step, TOTAL) == DEFAULT_SCHEDULE(step, TOTAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.r_max_final = 4.0  # type: ignore[misc]


def test_the_defaults_are_the_ones_training_uses() -> None:
    assert (DEFAULT_SCHEDULE.warmup_fraction, DEFAULT_SCHEDULE.r_ramp_end_fraction, DEFAULT_SCHEDULE.d_ramp_end_fraction) == (
        0.1, 0.5, 0.4,
    )
    assert renorm_limits(15_999, TOTAL) == (1.0, 0.0)  # plain batch norm for the first 10 %
    assert renorm_limits(64_000, TOTAL) == pytest.approx((2.5, 5.0))  # d_max final at 40 %
    assert renorm_limits(80_000, TOTAL) == (3.0, 5.0)  # r_max final at 50 %


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"warmup_fraction": -0.1}, r"warmup_fraction must be in \[0, 1\]"),
        ({"warmup_fraction": 1.5}, r"warmup_fraction must be in \[0, 1\]"),
        ({"warmup_fraction": 0.6}, "r_ramp_end_fraction must be in"),
        ({"r_ramp_end_fraction": 1.1}, "r_ramp_end_fraction must be in"),
        ({"d_ramp_end_fraction": 0.01}, "d_ramp_end_fraction must be in"),
        ({"r_max_final": 0.9}, "r_max_final must be a finite number >= 1"),
        ({"r_max_final": math.inf}, "r_max_final must be a finite number >= 1"),
        ({"d_max_final": -1.0}, "d_max_final must be a finite number >= 0"),
        ({"d_max_final": math.nan}, "d_max_final must be a finite number >= 0"),
    ],
)
def test_invalid_settings_raise(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        renorm_limits(0, TOTAL, **kwargs)
    with pytest.raises(ValueError, match=message):
        RenormSchedule(**kwargs)


@pytest.mark.parametrize(
    ("step", "total", "message"),
    [
        (-1, TOTAL, "step must be >= 0"),
        (1.5, TOTAL, "step must be an integer"),
        (True, TOTAL, "step must be an integer"),
        ("3", TOTAL, "step must be an integer"),
        (0, 0, "total_steps must be > 0"),
        (0, 10.0, "total_steps must be an integer"),
    ],
)
def test_invalid_steps_raise(step: object, total: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        renorm_limits(step, total)  # type: ignore[arg-type]


def test_apply_renorm_limits_sets_every_batch_renorm_layer() -> None:
    model = nn.Sequential(
        nn.Linear(4, 8),
        BatchRenorm1d(8),
        nn.Sequential(nn.Linear(8, 6), BatchRenorm1d(6), nn.BatchNorm1d(6)),
    )
    assert apply_renorm_limits(model, 2.5, 1.5) == 2
    layers = [m for m in model.modules() if isinstance(m, BatchRenorm1d)]
    assert all(layer.r_max == 2.5 and layer.d_max == 1.5 for layer in layers)
    assert all(type(layer.r_max) is float for layer in layers)
    assert apply_renorm_limits(nn.Linear(2, 2), 2.0, 1.0) == 0
    single = BatchRenorm1d(3)
    assert apply_renorm_limits(single, *renorm_limits(40_000, TOTAL, **PAPER)) == 1
    assert (single.r_max, single.d_max) == (3.0, 5.0)


@pytest.mark.parametrize(("r_max", "d_max"), [(0.5, 1.0), (2.0, -0.1), (math.nan, 0.0)])
def test_apply_renorm_limits_rejects_invalid_limits(r_max: float, d_max: float) -> None:
    layer = BatchRenorm1d(3, r_max=2.0, d_max=1.0)
    with pytest.raises(ValueError, match="must be >="):
        apply_renorm_limits(layer, r_max, d_max)
    assert (layer.r_max, layer.d_max) == (2.0, 1.0)
