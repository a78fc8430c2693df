"""What one `apply_neftune` call shares between its hooks: config, call stack, switches, counters, RNG, schedule.

`NoiseState` owns its mutable parts: other modules change them only through its methods (`suspend`, `count`,
`warn_once`, `set_progress`, `set_step`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Literal

import torch

from .call_context import CallStack
from .config import NEFTuneConfig
from .replay import ReplayStore
from .rng import NoiseGenerators, world_size
from .schedule import AlphaSchedule
from .stats import StatsAccumulator


@dataclass(frozen=True)
class CallCounts:
    """Why hooked forwards did or did not add noise (a snapshot of the running tallies)."""

    noised: int = 0
    eval_mode: int = 0
    suspended: int = 0
    no_grad: int = 0
    scheduled_off: int = 0  # the schedule put alpha at exactly 0 (warmup start, end of a decay)

    @property
    def total(self) -> int:
        return sum(getattr(self, field.name) for field in fields(self))

    def __sub__(self, earlier: CallCounts) -> CallCounts:
        """The forwards counted between the snapshot `earlier` and this one, field by field."""
        if not isinstance(earlier, CallCounts):
            return NotImplemented
        return CallCounts(*(getattr(self, field.name) - getattr(earlier, field.name) for field in fields(self)))


# What a hooked forward is counted as: a field of CallCounts.
CountReason = Literal["noised", "eval_mode", "suspended", "no_grad", "scheduled_off"]
_SLOTS: dict[str, int] = {field.name: slot for slot, field in enumerate(fields(CallCounts))}  # in NoiseState._tally
# What is warned about at most once per application.
WarningKey = Literal["unmatched_layout", "replay_evicted"]


class NoiseState:
    """What one `apply_neftune` call shares between its hooks: config, call stack, switches and counters."""

    def __init__(
        self,
        config: NEFTuneConfig,
        *,
        skip_no_grad: bool = False,
        track_stats: bool = False,
        placeholder_ids: tuple[int, ...] = (),
        quiet_inside: frozenset[int] = frozenset(),
        pad_token_id: int | None = None,
    ) -> None:
        self.config = config
        self.placeholder_ids = placeholder_ids
        self.pad_token_id = pad_token_id  # a pad-id token alone in a packed segment is padding (layout.py)
        self.replays = ReplayStore()  # what checkpoint recomputes must add again (replay.py)
        self.quiet_inside = quiet_inside  # ids of modules inside whose forward no noise is added
        self.stack = CallStack()
        self.skip_no_grad = skip_no_grad
        self.stats = StatsAccumulator() if track_stats else None
        self.schedule = AlphaSchedule(config.schedule, config.schedule_warmup)
        self._suspended = 0  # > 0 inside `suspend`; a counter so that it nests
        self._warned: set[WarningKey] = set()
        # Tallies live in a tensor, not Python ints: torch.compile guards on int values and would recompile on
        # every call. In-place adds on a small CPU tensor cost no device sync.
        self._tally = torch.zeros(len(_SLOTS), dtype=torch.int64)
        # Without a seed, several processes would all draw the same noise (the Trainer seeds every rank alike):
        # each rank then gets its own stream from (torch.initial_seed(), rank, step), still reproducible from the
        # run's seed. Decided here, not in the (possibly compiled) forward; the launcher's WORLD_SIZE is set already.
        seed = config.seed if config.seed is not None else (torch.initial_seed() if world_size() > 1 else None)
        self.generators = NoiseGenerators(seed) if seed is not None else None

    @property
    def counts(self) -> CallCounts:
        return CallCounts(*(int(value) for value in self._tally.tolist()))

    def count(self, reason: CountReason) -> None:
        """Count one hooked forward as `reason`."""
        self._tally[_SLOTS[reason]].add_(1)

    def warn_once(self, key: WarningKey) -> bool:
        """True the first time it is asked for `key`, False after: whether to issue that warning now."""
        if key in self._warned:
            return False
        self._warned.add(key)
        return True

    @property
    def alpha(self) -> float:
        """The alpha in force at the current progress."""
        return self.config.alpha * self.schedule.factor

    def set_progress(self, progress: float) -> None:
        self.schedule.set_progress(progress)

    def set_step(self, step: int) -> None:
        self.replays.clear()  # a new optimizer step: every backward of the last one has run
        if self.generators is not None:
            self.generators.set_step(step)

    def generator_for(self, device: torch.device) -> torch.Generator | None:
        """neftune's own generator for `device`, or None to draw from torch's global RNG."""
        return None if self.generators is None else self.generators.for_device(device)

    @contextlib.contextmanager
    def suspend(self) -> Iterator[None]:
        """No noise from this application inside the block; nests, and ends even when the block raises."""
        self._suspended += 1
        try:
            yield
        finally:
            self._suspended -= 1

    @property
    def enabled(self) -> bool:
        return self._suspended == 0
