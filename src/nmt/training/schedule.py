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
