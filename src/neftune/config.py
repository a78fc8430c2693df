"""`NEFTuneConfig`: the one frozen description of the noise, shared by the function, callback and trainer."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal, get_args

from .errors import NEFTuneError

Scaling = Literal["per_sequence", "padded"]
SCALINGS: tuple[str, ...] = get_args(Scaling)


def validate_alpha(alpha: object, *, name: str = "alpha") -> float:
    """Return `alpha` as a float, or raise: `TypeError` for a non-number, `NEFTuneError` for NaN, inf or < 0."""
    # bool is an int subclass; `alpha=True` is a bug, never a magnitude.
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(
            f"NEFTune {name} must be a real number (e.g. 5.0), got {alpha!r} of type {type(alpha).__name__}."
        )
    value = float(alpha)
    if math.isnan(value) or math.isinf(value):
        raise NEFTuneError(f"NEFTune {name} must be finite, got {value!r}; the paper uses 5, 10 or 15.")
    if value < 0:
        raise NEFTuneError(
            f"NEFTune {name} must be >= 0, got {value!r}; use a positive value such as 5.0, or 0 to turn noise off."
        )
    return value


@dataclass(frozen=True)
class NEFTuneConfig:
    """How NEFTune noises the input embeddings.

    The noise added to the embeddings of a sequence of `L` real tokens with hidden size `d` is
    `Uniform(-1, 1) * alpha / sqrt(L * d)`, drawn afresh at every training forward
    ([Jain et al. 2023](https://arxiv.org/abs/2310.05914), Algorithm 1).

    Args:
        alpha (`float`, defaults to 5.0):
            Noise magnitude. The paper uses 5, 10 and 15; 0 turns NEFTune off.
        scaling (`"per_sequence"` or `"padded"`, defaults to `"per_sequence"`):
            What `L` is. `"per_sequence"` follows the paper's training code: `L` is each sequence's own
            number of real tokens (each packed segment its own), and padding gets no noise.
            `"padded"` reproduces `transformers`' `neftune_post_forward_hook` bit for bit: `L` is the padded
            length of the batch and padding is noised too.

    Example:
        ```python
        from neftune import NEFTuneConfig, apply_neftune

        handle = apply_neftune(model, NEFTuneConfig(alpha=10.0))
        ```
    """

    alpha: float = 5.0
    scaling: Scaling = "per_sequence"

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", validate_alpha(self.alpha))
        if self.scaling not in SCALINGS:
            raise NEFTuneError(f"NEFTune scaling must be one of {SCALINGS}, got {self.scaling!r}.")


def as_config(alpha_or_config: float | NEFTuneConfig) -> NEFTuneConfig:
    """Accept either a bare alpha or a full config, as every public entry point does."""
    if isinstance(alpha_or_config, NEFTuneConfig):
        return alpha_or_config
    return NEFTuneConfig(alpha=validate_alpha(alpha_or_config))
