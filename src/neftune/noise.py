"""The noise distributions, drawn as unit-magnitude noise into a fresh buffer shaped like the output.

Each is scaled afterwards by the per-token magnitude `alpha / sqrt(L * d)`:
- `uniform` (the paper): `Uniform(-1, 1)`, so |noise| <= magnitude and its variance is magnitude^2 / 3.
- `gaussian`: zero-mean normal with standard deviation `1 / sqrt(3)`, i.e. the uniform's variance, so both carry
  the same noise energy for the same alpha (the paper's Table 6 compares the two); unbounded.
- `symmetric`: every element exactly `+1` or `-1` with probability 1/2 (one reading of SymNoise,
  arXiv 2312.01523), so every noised element is exactly `+magnitude` or `-magnitude`.

`NOISES` is the one table of kinds: `NOISE_KINDS` (the config's, CLI's and trainer arguments' choices) and the
validation derive from it. Adding a kind touches:
1. here: the name in `NoiseKind` and a row in `NOISES` (its torch draw, `unit_variance`, `bound`);
2. `kernels/triton_noise.py`: an index constant, its `KIND_INDEX` entry and its branch in `noise_add_kernel`
   (four random 32-bit words to four unit values);
3. the `noise` argument's description in `NEFTuneConfig`'s docstring (config.py) and the README;
4. tests/test_kernel.py's `test_moments_of_each_kind`: the kind's population moments. The torch draw is checked
   against its row by tests/test_variants.py, which iterates over `NOISES`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from .errors import NEFTuneError

NoiseKind = Literal["uniform", "gaussian", "symmetric"]
GAUSSIAN_STD = 1.0 / math.sqrt(3.0)


@dataclass(frozen=True)
class NoiseDistribution:
    """One noise kind: how the torch path draws it, and what the fused kernel and the tests rely on."""

    draw: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]  # fills the buffer in place, returns it
    unit_variance: float  # E[u^2]: the fused kernel's stats are computed from it (it keeps no noise tensor)
    bound: float | None  # the largest |u| (None: unbounded)


def _uniform(buffer: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return buffer.uniform_(-1.0, 1.0, generator=generator)


def _gaussian(buffer: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return buffer.normal_(0.0, GAUSSIAN_STD, generator=generator)


def _symmetric(buffer: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return buffer.bernoulli_(0.5, generator=generator).mul_(2.0).sub_(1.0)


NOISES: dict[str, NoiseDistribution] = {
    "uniform": NoiseDistribution(_uniform, unit_variance=1.0 / 3.0, bound=1.0),
    "gaussian": NoiseDistribution(_gaussian, unit_variance=1.0 / 3.0, bound=None),  # GAUSSIAN_STD squared
    "symmetric": NoiseDistribution(_symmetric, unit_variance=1.0, bound=1.0),
}
NOISE_KINDS: tuple[str, ...] = tuple(NOISES)


def noise_distribution(kind: str) -> NoiseDistribution:
    """The row of `NOISES` for `kind`, or a `NEFTuneError` naming it and the choices."""
    distribution = NOISES.get(kind)
    if distribution is None:
        raise NEFTuneError(f"NEFTune noise must be one of {NOISE_KINDS}, got {kind!r}.")
    return distribution


def draw_unit_noise(like: torch.Tensor, kind: NoiseKind, generator: torch.Generator | None) -> torch.Tensor:
    """A new tensor shaped like `like` (same dtype and device) of unit-magnitude noise of the given kind."""
    return noise_distribution(kind).draw(torch.empty_like(like), generator)
