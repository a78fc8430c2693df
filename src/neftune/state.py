"""What one `apply_neftune` call shares between its hooks: config, call stack, switches, counters, RNG, schedule."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .call_context import CallStack
from .config import NEFTuneConfig
from .replay import ReplayStore
from .rng import NoiseGenerators, world_size
from .schedule import alpha_factor
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
        return self.noised + self.eval_mode + self.suspended + self.no_grad + self.scheduled_off


# Slots of NoiseState.tally, in CallCounts field order.
NOISED, EVAL_MODE, SUSPENDED, NO_GRAD, SCHEDULED_OFF = range(5)


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
        self.suspended = 0  # > 0 inside `disable_noise`; a counter so the context manager nests
        self.skip_no_grad = skip_no_grad
        self.stats = StatsAccumulator() if track_stats else None
        self.warned_unmatched_layout = False
        self.warned_replay_evicted = False
        # Tallies live in a tensor, not Python ints: torch.compile guards on int values and would recompile on
        # every call. In-place adds on a small CPU tensor cost no device sync.
        self.tally = torch.zeros(5, dtype=torch.int64)
        # Without a seed, several processes would all draw the same noise (the Trainer seeds every rank alike):
        # each rank then gets its own stream from (torch.initial_seed(), rank, step), still reproducible from the
        # run's seed. Decided here, not in the (possibly compiled) forward; the launcher's WORLD_SIZE is set already.
        seed = config.seed if config.seed is not None else (torch.initial_seed() if world_size() > 1 else None)
        self.generators = NoiseGenerators(seed) if seed is not None else None
        self.scheduled = config.schedule != "constant" or config.schedule_warmup > 0
        # A changing Python float would be specialised by torch.compile (one recompile per step): the schedule's
        # factor reaches the noise as a tensor per device, refilled in place at every progress update.
        self._factor_tensors: dict[torch.device, torch.Tensor] = {}
        self.set_progress(0.0)

    @property
    def counts(self) -> CallCounts:
        return CallCounts(*(int(value) for value in self.tally.tolist()))

    def count(self, slot: int) -> None:
        self.tally[slot].add_(1)

    @property
    def alpha(self) -> float:
        """The alpha in force at the current progress."""
        return self.config.alpha * self.factor

    def set_progress(self, progress: float) -> None:
        self.factor = alpha_factor(self.config.schedule, self.config.schedule_warmup, progress)
        self.scheduled_zero = self.factor == 0.0
        for tensor in self._factor_tensors.values():
            tensor.fill_(self.factor)

    def factor_tensor(self, device: torch.device) -> torch.Tensor:
        tensor = self._factor_tensors.get(device)
        if tensor is None:
            tensor = torch.full((), self.factor, dtype=torch.float32, device=device)
            self._factor_tensors[device] = tensor
        return tensor

    def set_step(self, step: int) -> None:
        self.replays.clear()  # a new optimizer step: every backward of the last one has run
        if self.generators is not None:
            self.generators.set_step(step)

    def generator_for(self, device: torch.device) -> torch.Generator | None:
        """neftune's own generator for `device`, or None to draw from torch's global RNG."""
        return None if self.generators is None else self.generators.for_device(device)

    @property
    def enabled(self) -> bool:
        return self.suspended == 0
