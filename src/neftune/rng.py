"""Reproducible noise: generators of neftune's own, independent of every other use of torch's RNG.

With a seed, the noise of training step `s` on rank `r` comes from a generator seeded with a hash of
`(seed, r, s)`. The noise sequence is then a function of the seed, the rank and the step alone: the same in
every run with the same seed, different for different seeds and ranks, and reproduced exactly when training
resumes from a checkpoint at any step, with no generator state to save.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch


def distributed_rank() -> int:
    """This process's global rank: from torch.distributed when initialised, else the launcher's RANK variable."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_world_size())
    return int(os.environ.get("WORLD_SIZE", "1"))


def derive_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed mixing (seed, rank, step); stable across platforms and Python versions."""
    digest = hashlib.blake2b(f"neftune:{seed}:{rank}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class NoiseGenerators:
    """One generator per device, all positioned at the start of the current step's stream."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.step = 0
        self._rank: int | None = None
        self._generators: dict[torch.device, torch.Generator] = {}
        self._fresh: set[torch.device] = set()

    def set_step(self, step: int) -> None:
        """Restart every device's stream at `step` (a no-op if it is the current step)."""
        if step != self.step:
            self.step = step
            self._fresh.clear()

    def for_device(self, device: torch.device) -> torch.Generator:
        if self._rank is None:
            self._rank = distributed_rank()  # read lazily: the process group may start after apply_neftune
        generator = self._generators.get(device)
        if generator is None:
            generator = torch.Generator(device=device)
            self._generators[device] = generator
        if device not in self._fresh:
            generator.manual_seed(derive_seed(self.seed, self._rank, self.step))
            self._fresh.add(device)
        return generator

    def __getstate__(self) -> dict[str, Any]:
        # generators are rebuilt on demand from (seed, rank, step); only the position is state
        return {"seed": self.seed, "step": self.step}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["seed"])  # type: ignore[misc]
        self.step = state["step"]
