"""`NEFTuneConfig`: the one frozen description of the noise, shared by the function, callback and trainer."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal, get_args

from .errors import NEFTuneError
from .kernels import KERNELS, KernelKind, triton_available
from .noise import NOISE_KINDS, NoiseKind
from .schedule import SCHEDULES, ScheduleKind

Scaling = Literal["per_sequence", "padded"]
SCALINGS: tuple[str, ...] = get_args(Scaling)
FLOAT32_MAX = 3.4028234663852886e38  # the noise magnitude is computed in float32


def validate_alpha(alpha: object, *, name: str = "alpha") -> float:
    """Return `alpha` as a float, or raise: `TypeError` for a non-number, `NEFTuneError` for NaN, inf or < 0."""
    # bool is an int subclass; `alpha=True` is a bug, never a magnitude.
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(
            f"NEFTune {name} must be a real number (e.g. 5.0), got {alpha!r} of type {type(alpha).__name__}."
        )
    try:
        value = float(alpha)
    except OverflowError:  # an int beyond float range, e.g. 10**400
        value, shown = math.inf, f"an integer of {len(str(abs(alpha)))} digits"
    else:
        shown = f"{value!r}"
    if math.isnan(value) or (math.isinf(value) and not shown.startswith("an integer")):
        raise NEFTuneError(f"NEFTune {name} must be finite, got {shown}; the paper uses 5, 10 or 15.")
    if abs(value) > FLOAT32_MAX:
        raise NEFTuneError(
            f"NEFTune {name} must be finite in float32 (at most {FLOAT32_MAX:.3g}), got {shown}: the noise would be "
            "inf and padding NaN. The paper uses 5, 10 or 15."
        )
    if value < 0:
        raise NEFTuneError(
            f"NEFTune {name} must be >= 0, got {value!r}; use a positive value such as 5.0, or 0 to turn noise off."
        )
    return value


def validate_count(value: object, *, name: str, example: int, none_ok: bool = False) -> int:
    """Return `value` as a whole number >= 1, or raise: `TypeError` for a non-integer (`1.5`, `"5"`, `True`),
    `NEFTuneError` for 0 or less. `none_ok` only adds "or None" to the messages; callers pass None through."""
    off = " or None" if none_ok else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a whole number >= 1{off}, got {value!r} of type {type(value).__name__}.")
    if int(value) < 1:
        raise NEFTuneError(f"{name} must be >= 1{off}, got {value!r}; e.g. {example}.")
    return int(value)


def validate_flag(value: object, *, name: str) -> bool:
    """Return `value` if it is True or False, else raise `TypeError` (`"no"` is truthy, so it is never guessed)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} of type {type(value).__name__}.")
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
        noise (`"uniform"`, `"gaussian"` or `"symmetric"`, defaults to `"uniform"`):
            The distribution, scaled by `alpha / sqrt(L * d)`. `"uniform"`: `Uniform(-1, 1)` (the paper).
            `"gaussian"`: zero-mean normal with standard deviation `1/sqrt(3)`, the uniform's variance.
            `"symmetric"`: exactly `+1` or `-1` with equal probability (one reading of SymNoise).
        schedule (`"constant"`, `"linear"` or `"cosine"`, defaults to `"constant"`):
            How alpha changes over training progress `p` in [0, 1]: `alpha`, `alpha * (1 - p)` or
            `alpha * 0.5 * (1 + cos(pi * p))`. Progress comes from the trainer, or `handle.set_progress(p)`.
        schedule_warmup (`float`, defaults to 0.0):
            Fraction of training over which alpha ramps linearly from 0; the schedule then runs over the rest.
        seed (`int`, *optional*):
            Draw the noise from neftune's own generator seeded from `(seed, rank, step)`: the same noise in every
            run with this seed, whatever else uses torch's RNG, different per rank, reproduced on resume.
            None (default) draws from torch's global RNG, like the reference implementations.
        noise_decoder_inputs (`bool`, defaults to `True`):
            Encoder-decoder models (T5, BART, ...): also noise the decoder's input embeddings. The encoder's
            inputs are always noised. True matches decoder-only NEFTune, which noises the response tokens
            too; in an encoder-decoder model those are the decoder's inputs.
        kernel (`"auto"`, `"torch"` or `"triton"`, defaults to `"auto"`):
            How the noise is drawn and added. `"torch"`: torch ops, bit-identical to the paper's code and (with
            `scaling="padded"`) to transformers' hook. `"triton"`: neftune's fused Triton kernel, one pass over
            the embeddings (`pip install "neftune[triton]"`; CUDA, or CPU under `TRITON_INTERPRET=1`); the same
            distribution and magnitudes, other random bits. `"auto"`: the kernel for CUDA embeddings when Triton
            imports, in eager mode (under `torch.compile`, inductor fuses the torch ops itself), except
            `scaling="padded"` with uniform noise, which stays bit-exact with transformers; the torch path otherwise.

    Example:
        ```python
        from neftune import NEFTuneConfig, apply_neftune

        handle = apply_neftune(model, NEFTuneConfig(alpha=10.0))
        ```
    """

    alpha: float = 5.0
    scaling: Scaling = "per_sequence"
    noise: NoiseKind = "uniform"
    schedule: ScheduleKind = "constant"
    schedule_warmup: float = 0.0
    seed: int | None = None
    noise_decoder_inputs: bool = True
    kernel: KernelKind = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", validate_alpha(self.alpha))
        _check_choice("scaling", self.scaling, SCALINGS)
        _check_choice("noise", self.noise, NOISE_KINDS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("kernel", self.kernel, KERNELS)
        if self.kernel == "triton":
            triton_available()  # import it now: a first import inside a torch.compile trace would fail
        warmup = self.schedule_warmup
        if isinstance(warmup, bool) or not isinstance(warmup, numbers.Real) or not 0.0 <= float(warmup) < 1.0:
            raise NEFTuneError(
                f"NEFTune schedule_warmup must be a fraction of training in [0, 1), got {warmup!r}; e.g. 0.1."
            )
        object.__setattr__(self, "schedule_warmup", float(warmup))
        if not isinstance(self.noise_decoder_inputs, bool):
            raise NEFTuneError(
                f"NEFTune noise_decoder_inputs must be True or False, got {self.noise_decoder_inputs!r}."
            )
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise NEFTuneError(f"NEFTune seed must be a non-negative int or None, got {self.seed!r}.")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise NEFTuneError(f"NEFTune {name} must be one of {choices}, got {value!r}.")


def as_config(alpha_or_config: float | NEFTuneConfig) -> NEFTuneConfig:
    """Accept either a bare alpha or a full config, as every public entry point does."""
    if isinstance(alpha_or_config, NEFTuneConfig):
        return alpha_or_config
    return NEFTuneConfig(alpha=validate_alpha(alpha_or_config))
