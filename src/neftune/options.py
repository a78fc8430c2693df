"""Every NEFTune option, declared once: name, type, default, choices, help text and validator.

Two groups: `NOISE_OPTIONS` are the `NEFTuneConfig` fields (what the noise is); `TRAINER_OPTIONS` are what a
trainer does around it (the clean-loss probe, the logged statistics). `CALLBACK_OPTIONS` adds `on_silent`, which
only `NEFTuneCallback` and `patch_transformers` take.

Derived from this table, with nothing to edit: the `neftune_*` fields of `neftune.SFTConfig` (type, default,
help, choices) and their validation (`neftune_config_from_args`, `trainer_options_from_args`), the `neftune sft`
option group, the axolotl YAML schema `NEFTuneArgs` and the plugin's reading of it, the noise flags of
`neftune demo` and `neftune run` (`add_option_argument`), and the defaults and validation of `NEFTuneConfig` and
`NEFTuneCallback`. Every validator takes the name its message shows, so each surface names its own option
(`NEFTune scaling`, `neftune_scaling`, `clean_loss_steps`).

Adding an option touches:
1. this module: one `Option(...)` and its place in `NOISE_OPTIONS` or `TRAINER_OPTIONS`;
2. its behaviour: the code that uses the value (for a noise option the hook, via `NEFTuneConfig`; for a trainer
   option `NEFTuneCallback`);
3. the typed declarations tests/test_options.py asks for: a noise option is a `NEFTuneConfig` field
   (`name: Type = OPTION.default`, Literal-typed when it has choices) with its entry in the class docstring; a
   trainer option is a keyword of `NEFTuneCallback.__init__` (`name: Type = OPTION.default`, checked with
   `OPTION.validate`) with its docstring entry, and a value `SFTTrainer` hands to its callback;
4. the README's API table rows (`NEFTuneConfig(...)`, `NEFTuneCallback(...)`, the `SFTConfig` fields) and the
   axolotl YAML comment, which tests/test_options.py compares with this table.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, cast, get_args

from .errors import NEFTuneError
from .kernels import KERNELS, KernelKind
from .noise import NOISE_KINDS, NoiseKind
from .schedule import SCHEDULES, ScheduleKind

T = TypeVar("T")
Check = Callable[[object, str], T]  # (value, the name its message shows) -> the value, normalised

Scaling = Literal["per_sequence", "padded"]
SCALINGS: tuple[str, ...] = get_args(Scaling)
OnSilent = Literal["raise", "warn"]
ON_SILENT_CHOICES: tuple[str, ...] = get_args(OnSilent)
FLOAT32_MAX = 3.4028234663852886e38  # the noise magnitude is computed in float32


@dataclass(frozen=True)
class Option(Generic[T]):
    """One option. `field_name` (default `neftune_<name>`) is its `SFTConfig` field and axolotl YAML key; `flag`
    (default `--<name-with-dashes>`, `--no-...` for a flag that is on by default) its command-line flag."""

    name: str
    value_type: type
    default: T
    help: str
    check: Check[T] | None = None  # None: `choices` is the check
    choices: tuple[str, ...] = ()
    field_name: str = ""
    flag: str = ""

    def __post_init__(self) -> None:
        if self.check is None and not self.choices:
            raise TypeError(f"option {self.name!r} needs a check or choices")
        dashed = self.name.replace("_", "-")
        negated = self.value_type is bool and self.default is True
        object.__setattr__(self, "field_name", self.field_name or f"neftune_{self.name}")
        object.__setattr__(self, "flag", self.flag or (f"--no-{dashed}" if negated else f"--{dashed}"))

    def validate(self, value: object, name: str | None = None) -> T:
        """`value` checked and normalised; an error's message names the option as `name` (default: its own)."""
        shown = self.name if name is None else name
        if self.check is not None:
            return self.check(value, shown)
        if value not in self.choices:
            raise NEFTuneError(f"{shown} must be one of {self.choices}, got {value!r}.")
        return cast(T, value)


def check_alpha(alpha: object, name: str) -> float:
    """`alpha` as a float, or raise: `TypeError` for a non-number, `NEFTuneError` for NaN, inf or < 0."""
    # bool is an int subclass; `alpha=True` is a bug, never a magnitude.
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"{name} must be a real number (e.g. 5.0), got {alpha!r} of type {type(alpha).__name__}.")
    try:
        value = float(alpha)
    except OverflowError:  # an int beyond float range, e.g. 10**400
        value, shown = math.inf, f"an integer of {len(str(abs(alpha)))} digits"
    else:
        shown = f"{value!r}"
    if math.isnan(value) or (math.isinf(value) and not shown.startswith("an integer")):
        raise NEFTuneError(f"{name} must be finite, got {shown}; the paper uses 5, 10 or 15.")
    if abs(value) > FLOAT32_MAX:
        raise NEFTuneError(
            f"{name} must be finite in float32 (at most {FLOAT32_MAX:.3g}), got {shown}: the noise would be "
            "inf and padding NaN. The paper uses 5, 10 or 15."
        )
    if value < 0:
        raise NEFTuneError(
            f"{name} must be >= 0, got {value!r}; use a positive value such as 5.0, or 0 to turn noise off."
        )
    return value


def validate_count(value: object, *, name: str, example: int, none_ok: bool = False) -> int:
    """`value` as a whole number >= 1, or raise: `TypeError` for a non-integer (`1.5`, `"5"`, `True`),
    `NEFTuneError` for 0 or less. `none_ok` only adds "or None" to the messages; callers pass None through."""
    off = " or None" if none_ok else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a whole number >= 1{off}, got {value!r} of type {type(value).__name__}.")
    if int(value) < 1:
        raise NEFTuneError(f"{name} must be >= 1{off}, got {value!r}; e.g. {example}.")
    return int(value)


def validate_flag(value: object, *, name: str) -> bool:
    """`value` if it is True or False, else raise `TypeError` (`"no"` is truthy, so it is never guessed)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} of type {type(value).__name__}.")
    return value


def _count(example: int) -> Check[int]:
    return lambda value, name: validate_count(value, name=name, example=example)


def _count_or_none(example: int) -> Check[int | None]:
    return lambda value, name: (
        None if value is None else validate_count(value, name=name, example=example, none_ok=True)
    )


def _flag(value: object, name: str) -> bool:
    return validate_flag(value, name=name)


def _config_flag(value: object, name: str) -> bool:
    # A NEFTuneConfig field: its errors are NEFTuneErrors (ValueErrors), as they have always been.
    if not isinstance(value, bool):
        raise NEFTuneError(f"{name} must be True or False, got {value!r}.")
    return value


def _fraction(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) < 1.0:
        raise NEFTuneError(f"{name} must be a fraction of training in [0, 1), got {value!r}; e.g. 0.1.")
    return float(value)


def _seed(value: object, name: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise NEFTuneError(f"{name} must be a non-negative int or None, got {value!r}.")
    return value


def _on_silent(value: object, name: str) -> OnSilent:
    if value not in ON_SILENT_CHOICES:
        raise NEFTuneError(f"{name} must be 'raise' or 'warn', got {value!r}.")
    return cast(OnSilent, value)


ALPHA: Option[float] = Option(
    "alpha",
    float,
    5.0,
    "NEFTune noise alpha (Jain et al. 2023, arXiv 2310.05914): the noise magnitude, alpha/sqrt(L*d) per element. "
    "The paper uses 5, 10 or 15; 0 turns NEFTune off.",
    check_alpha,
    field_name="neftune_noise_alpha",  # transformers' own TrainingArguments field
)
SCALING: Option[Scaling] = Option(
    "scaling",
    str,
    "per_sequence",
    "What L in alpha/sqrt(L*d) is. per_sequence: each sequence's own real length, no noise on padding, each "
    "packed segment its own L (the paper's training code). padded: the padded batch length, padding noised "
    "(transformers' neftune_post_forward_hook, bit for bit).",
    choices=SCALINGS,
)
NOISE: Option[NoiseKind] = Option(
    "noise",
    str,
    "uniform",
    "Noise distribution. uniform: Uniform(-1, 1) (the paper). gaussian: normal with the uniform's variance "
    "(std 1/sqrt(3)). symmetric: exactly +1 or -1 with equal probability (a SymNoise reading). Each is scaled by "
    "alpha/sqrt(L*d).",
    choices=NOISE_KINDS,
)
SCHEDULE: Option[ScheduleKind] = Option(
    "schedule",
    str,
    "constant",
    "Alpha over training progress p in [0, 1]: constant, linear (alpha*(1-p)) or cosine (alpha*0.5*(1+cos(pi*p))).",
    choices=SCHEDULES,
)
SCHEDULE_WARMUP: Option[float] = Option(
    "schedule_warmup",
    float,
    0.0,
    "Fraction of training over which alpha ramps linearly from 0; the schedule runs after it.",
    _fraction,
)
SEED: Option[int | None] = Option(
    "seed",
    int,
    None,
    "Seed of neftune's own noise generator: identical noise for the same seed whatever else uses the RNG, "
    "different per rank, reproduced on resume. None: torch's global RNG.",
    _seed,
    flag="--noise-seed",  # `neftune demo --seed` is the training seed
)
NOISE_DECODER_INPUTS: Option[bool] = Option(
    "noise_decoder_inputs",
    bool,
    True,
    "Encoder-decoder models: also noise the decoder's input embeddings (the encoder's always are).",
    _config_flag,
    flag="--no-decoder-noise",
)
KERNEL: Option[KernelKind] = Option(
    "kernel",
    str,
    "auto",
    "How the noise is drawn and added. torch: torch ops, bit-exact with the paper's code. triton: neftune's fused "
    "one-pass kernel (pip install neftune[triton]; CUDA). auto: triton on CUDA when it imports (uniform padded "
    "noise stays on torch, bit-exact with transformers), torch otherwise.",
    choices=KERNELS,
)

CLEAN_LOSS_STEPS: Option[int | None] = Option(
    "clean_loss_steps",
    int,
    None,
    "Every this many optimizer steps, log neftune/clean_train_loss: the loss of a fixed subset of training "
    "examples with the noise off. None: never.",
    _count_or_none(example=50),
)
CLEAN_LOSS_SAMPLES: Option[int] = Option(
    "clean_loss_samples",
    int,
    16,
    "How many training examples neftune/clean_train_loss is measured on.",
    _count(example=16),
)
LOG_STATS: Option[bool] = Option(
    "log_stats",
    bool,
    True,
    "Log neftune/noise_rms, neftune/embed_rms and neftune/noise_to_signal at every logging step (two extra "
    "reductions per forward, synced once per logging step).",
    _flag,
)
ON_SILENT: Option[OnSilent] = Option(
    "on_silent",
    str,
    "raise",
    "What to do when a logging interval of training passed without any noise being added (embedding in eval "
    "mode, a module forward never calls): raise, or warn.",
    _on_silent,
    choices=ON_SILENT_CHOICES,
)

NOISE_OPTIONS: tuple[Option[Any], ...] = (
    ALPHA,
    SCALING,
    NOISE,
    SCHEDULE,
    SCHEDULE_WARMUP,
    SEED,
    NOISE_DECODER_INPUTS,
    KERNEL,
)
TRAINER_OPTIONS: tuple[Option[Any], ...] = (CLEAN_LOSS_STEPS, CLEAN_LOSS_SAMPLES, LOG_STATS)
CALLBACK_OPTIONS: tuple[Option[Any], ...] = (*TRAINER_OPTIONS, ON_SILENT)
FIELD_OPTIONS: tuple[Option[Any], ...] = (*NOISE_OPTIONS, *TRAINER_OPTIONS)  # the `neftune_*` config fields
