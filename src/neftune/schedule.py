"""Alpha schedules over training progress (our addition; the paper keeps alpha constant).

`progress` runs from 0 (first step) to 1 (end of training). With `warmup = w > 0`, alpha ramps linearly from 0 to
its value over `progress < w`; the decay shape is then applied to the remaining fraction of training,
`q = (progress - w) / (1 - w)`:

- `constant`: `alpha`
- `linear`: `alpha * (1 - q)`
- `cosine`: `alpha * 0.5 * (1 + cos(pi * q))`
"""

from __future__ import annotations

import math
from typing import Literal, get_args

ScheduleKind = Literal["constant", "linear", "cosine"]
SCHEDULES: tuple[str, ...] = get_args(ScheduleKind)


def alpha_factor(schedule: ScheduleKind, warmup: float, progress: float) -> float:
    """The multiplier of alpha at `progress` in [0, 1]."""
    if warmup > 0 and progress < warmup:
        return progress / warmup
    remaining = (progress - warmup) / (1.0 - warmup) if warmup > 0 else progress
    if schedule == "linear":
        return 1.0 - remaining
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * remaining))
    return 1.0
