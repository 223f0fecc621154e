"""Learning-rate schedules as multipliers of the configured peak learning rate."""

from __future__ import annotations

import math


def lr_multiplier(step: int, scheduler: str, warmup_steps: int) -> float:
    """Return the factor applied to ``optim.lr`` at optimizer step ``step`` (0-based).

    ``inverse_sqrt``: linear warmup to 1 over ``warmup_steps``, then sqrt(warmup_steps / step).
    ``constant``: 1 at every step.
    """
    if scheduler == "constant":
        return 1.0
    if scheduler == "inverse_sqrt":
        step = step + 1
        warmup = max(warmup_steps, 1)
        return min(step / warmup, math.sqrt(warmup / step))
    raise ValueError(f"unknown optim.scheduler {scheduler!r}; use 'inverse_sqrt' or 'constant'")


def cooldown_multiplier(time_fraction: float, cooldown_fraction: float | None) -> float:
    """Return the factor that takes the learning rate linearly to zero over the last part of a time budget.

    ``time_fraction`` is the training time spent divided by the time limit (0 at the start, 1 at the limit).
    The factor is 1 until ``1 - cooldown_fraction`` of the budget is spent, then falls linearly to 0 at the
    limit. ``cooldown_fraction=None`` disables the cooldown (factor 1 throughout).
    """
    if cooldown_fraction is None:
        return 1.0
    remaining = min(max(1.0 - time_fraction, 0.0), 1.0)
    return min(1.0, remaining / cooldown_fraction)
