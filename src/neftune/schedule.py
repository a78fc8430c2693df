"""Alpha schedules over training progress (our addition; the paper keeps alpha constant).

`progress` runs from 0 (first step) to 1 (end of training). With `warmup = w > 0`, alpha ramps linearly from 0 to
its value over `progress < w`; the decay shape is then applied to the remaining fraction of training,
`q = (progress - w) / (1 - w)`:

- `constant`: `alpha`
- `linear`: `alpha * (1 - q)`
- `cosine`: `alpha * 0.5 * (1 + cos(pi * q))`

`DECAYS` is the one table of shapes (`SCHEDULES`, the choices, derives from it); a new shape is a name in
`ScheduleKind`, a row there, and its line above and in `NEFTuneConfig`'s docstring.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch

from .errors import NEFTuneError

ScheduleKind = Literal["constant", "linear", "cosine"]

# The multiplier of alpha at the fraction `q` in [0, 1] of training after the warmup: 1 at q = 0, never above.
DECAYS: dict[str, Callable[[float], float]] = {
    "constant": lambda remaining: 1.0,
    "linear": lambda remaining: 1.0 - remaining,
    "cosine": lambda remaining: 0.5 * (1.0 + math.cos(math.pi * remaining)),
}
SCHEDULES: tuple[str, ...] = tuple(DECAYS)


def schedule_decay(schedule: str) -> Callable[[float], float]:
    """The row of `DECAYS` for `schedule`, or a `NEFTuneError` naming it and the choices."""
    decay = DECAYS.get(schedule)
    if decay is None:
        raise NEFTuneError(f"NEFTune schedule must be one of {SCHEDULES}, got {schedule!r}.")
    return decay


def alpha_factor(schedule: ScheduleKind, warmup: float, progress: float) -> float:
    """The multiplier of alpha at `progress` in [0, 1]."""
    decay = schedule_decay(schedule)
    if warmup > 0 and progress < warmup:
        return progress / warmup
    return decay((progress - warmup) / (1.0 - warmup) if warmup > 0 else progress)


class AlphaSchedule:
    """The factor of alpha at the current progress, as a float for the host and as a tensor on each device.

    A changing Python float would be specialised by torch.compile (one recompile per step): the factor reaches the
    noise as a float32 tensor per device, refilled in place at every progress update. `is_zero` is a bool, kept
    beside the float, so that a compiled hook guards on it and not on the factor's value.
    """

    def __init__(self, kind: ScheduleKind, warmup: float) -> None:
        schedule_decay(kind)  # refuse an unknown kind now, not at the first progress update
        self.kind = kind
        self.warmup = warmup
        self.varies = kind != "constant" or warmup > 0  # False: the factor is always 1 and the noise skips it
        self._tensors: dict[torch.device, torch.Tensor] = {}
        self._factor = 1.0
        self._is_zero = False
        self.set_progress(0.0)

    @property
    def factor(self) -> float:
        return self._factor

    @property
    def is_zero(self) -> bool:
        """The factor is exactly 0 (warmup start, end of a decay): no noise at all."""
        return self._is_zero

    def set_progress(self, progress: float) -> None:
        self._factor = alpha_factor(self.kind, self.warmup, progress)
        self._is_zero = self._factor == 0.0
        for tensor in self._tensors.values():
            tensor.fill_(self._factor)

    def factor_tensor(self, device: torch.device) -> torch.Tensor:
        """The factor as a 0-D float32 tensor on `device`, made once and refilled in place (do not keep a reference
        across progress updates: copy it)."""
        tensor = self._tensors.get(device)
        if tensor is None:
            tensor = torch.full((), self._factor, dtype=torch.float32, device=device)
            self._tensors[device] = tensor
        return tensor
