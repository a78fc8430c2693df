"""`NEFTuneConfig`: the one frozen description of the noise, shared by the function, callback and trainer."""

from __future__ import annotations

from dataclasses import dataclass

from .kernels import KernelKind, triton_available
from .noise import NoiseKind
from .options import (
    ALPHA,
    KERNEL,
    NOISE,
    NOISE_DECODER_INPUTS,
    NOISE_OPTIONS,
    SCALING,
    SCALINGS,
    SCHEDULE,
    SCHEDULE_WARMUP,
    SEED,
    Scaling,
    check_alpha,
    validate_count,
    validate_flag,
)
from .schedule import ScheduleKind

__all__ = ["SCALINGS", "NEFTuneConfig", "Scaling", "as_config", "validate_alpha", "validate_count", "validate_flag"]


def validate_alpha(alpha: object, *, name: str = "alpha") -> float:
    """Return `alpha` as a float, or raise: `TypeError` for a non-number, `NEFTuneError` for NaN, inf or < 0.

    The messages say `NEFTune <name>`; `neftune.options.check_alpha` takes the whole name to show."""
    return check_alpha(alpha, f"NEFTune {name}")


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

    # The defaults and checks come from neftune.options; tests/test_options.py keeps these fields in step with it.
    alpha: float = ALPHA.default
    scaling: Scaling = SCALING.default
    noise: NoiseKind = NOISE.default
    schedule: ScheduleKind = SCHEDULE.default
    schedule_warmup: float = SCHEDULE_WARMUP.default
    seed: int | None = SEED.default
    noise_decoder_inputs: bool = NOISE_DECODER_INPUTS.default
    kernel: KernelKind = KERNEL.default

    def __post_init__(self) -> None:
        for option in NOISE_OPTIONS:
            value = option.validate(getattr(self, option.name), f"NEFTune {option.name}")
            object.__setattr__(self, option.name, value)
        if self.kernel == "triton":
            triton_available()  # import it now: a first import inside a torch.compile trace would fail


def as_config(alpha_or_config: float | NEFTuneConfig) -> NEFTuneConfig:
    """Accept either a bare alpha or a full config, as every public entry point does."""
    if isinstance(alpha_or_config, NEFTuneConfig):
        return alpha_or_config
    return NEFTuneConfig(alpha=validate_alpha(alpha_or_config))
