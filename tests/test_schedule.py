"""Unit tests of the learning-rate schedules: inverse-square-root warmup and the time-budget cooldown."""

from __future__ import annotations

import math

import pytest

from nmt.training.schedule import cooldown_multiplier, lr_multiplier


def test_inverse_sqrt_warms_up_linearly_then_decays():
    warmup = 4

    factors = [lr_multiplier(step, "inverse_sqrt", warmup) for step in range(16)]

    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # Step s (1-based) after warmup: sqrt(warmup / s).
    assert factors[15] == pytest.approx(math.sqrt(4 / 16))
    assert all(a > b for a, b in zip(factors[3:], factors[4:]))


def test_constant_schedule_and_unknown_name():
    assert lr_multiplier(123, "constant", 10) == 1.0
    with pytest.raises(ValueError, match="unknown optim.scheduler 'cosine'"):
        lr_multiplier(0, "cosine", 10)


@pytest.mark.parametrize(
    "time_fraction, expected",
    [(0.0, 1.0), (0.5, 1.0), (0.8, 1.0), (0.85, 0.75), (0.9, 0.5), (0.95, 0.25), (1.0, 0.0), (1.3, 0.0)],
)
def test_cooldown_falls_linearly_over_last_share(time_fraction, expected):
    assert cooldown_multiplier(time_fraction, 0.2) == pytest.approx(expected)


def test_cooldown_over_whole_budget_and_disabled():
    assert cooldown_multiplier(0.25, 1.0) == pytest.approx(0.75)
    assert cooldown_multiplier(-0.1, 1.0) == 1.0  # clamped, so the schedule's own factor is never raised
    assert cooldown_multiplier(0.99, None) == 1.0
