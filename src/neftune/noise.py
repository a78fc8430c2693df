"""The three noise distributions, drawn as unit-magnitude noise into a fresh buffer shaped like the output.

Each is scaled afterwards by the per-token magnitude `alpha / sqrt(L * d)`:
- `uniform` (the paper): `Uniform(-1, 1)`, so |noise| <= magnitude and its variance is magnitude^2 / 3.
- `gaussian`: zero-mean normal with standard deviation `1 / sqrt(3)`, i.e. the uniform's variance, so both carry
  the same noise energy for the same alpha (the paper's Table 6 compares the two); unbounded.
- `symmetric`: every element exactly `+1` or `-1` with probability 1/2 (one reading of SymNoise,
  arXiv 2312.01523), so every noised element is exactly `+magnitude` or `-magnitude`.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch

NoiseKind = Literal["uniform", "gaussian", "symmetric"]
NOISE_KINDS: tuple[str, ...] = get_args(NoiseKind)
GAUSSIAN_STD = 1.0 / math.sqrt(3.0)
# E[u^2] of each unit noise: what the fused kernel's stats are computed from (it keeps no noise tensor).
UNIT_VARIANCE: dict[str, float] = {"uniform": 1.0 / 3.0, "gaussian": 1.0 / 3.0, "symmetric": 1.0}


def draw_unit_noise(like: torch.Tensor, kind: NoiseKind, generator: torch.Generator | None) -> torch.Tensor:
    """A new tensor shaped like `like` (same dtype and device) of unit-magnitude noise of the given kind."""
    noise = torch.empty_like(like)
    if kind == "uniform":
        return noise.uniform_(-1.0, 1.0, generator=generator)
    if kind == "gaussian":
        return noise.normal_(0.0, GAUSSIAN_STD, generator=generator)
    return noise.bernoulli_(0.5, generator=generator).mul_(2.0).sub_(1.0)
