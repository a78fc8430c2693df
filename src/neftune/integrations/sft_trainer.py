"""Drop-in TRL `SFTTrainer` / `SFTConfig`: change one import and NEFTune runs with the paper's semantics.

```python
from neftune import SFTConfig, SFTTrainer  # instead of: from trl import SFTConfig, SFTTrainer
```
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import trl

from ..config import SCALINGS, NEFTuneConfig, validate_alpha, validate_count, validate_flag
from ..discovery import select_targets
from ..errors import NEFTuneError
from ..kernels import KERNELS
from ..model_families import embed_scale_factor
from ..noise import NOISE_KINDS
from ..schedule import SCHEDULES
from .callback import NEFTuneCallback

logger = logging.getLogger("neftune")

DEFAULT_ALPHA = 5.0


@dataclass
class SFTConfig(trl.SFTConfig):  # type: ignore[misc]
    """`trl.SFTConfig` with NEFTune on by default (alpha 5) and every `NEFTuneConfig` option as a field."""

    neftune_noise_alpha: float | None = field(
        default=DEFAULT_ALPHA,
        metadata={
            "help": "NEFTune noise alpha (Jain et al. 2023, arXiv 2310.05914); the paper uses 5, 10 or 15. "
            "0 turns NEFTune off; None means the default, 5."
        },
    )
    neftune_scaling: str = field(
        default="per_sequence",
        metadata={
            "help": "What L in alpha/sqrt(L*d) is. per_sequence: each sequence's own real length, no noise on "
            "padding, each packed segment its own L (the paper's training code). padded: the padded batch "
            "length, padding noised (transformers' neftune_post_forward_hook, bit for bit).",
            "choices": list(SCALINGS),
        },
    )
    neftune_noise: str = field(
        default="uniform",
        metadata={
            "help": "Noise distribution. uniform: Uniform(-1, 1) (the paper). gaussian: normal with the uniform's "
            "variance (std 1/sqrt(3)). symmetric: exactly +1 or -1 with equal probability (a SymNoise reading). "
            "Each is scaled by alpha/sqrt(L*d).",
            "choices": list(NOISE_KINDS),
        },
    )
    neftune_schedule: str = field(
        default="constant",
        metadata={
            "help": "Alpha over training progress p in [0, 1]: constant, linear (alpha*(1-p)) or cosine "
            "(alpha*0.5*(1+cos(pi*p))).",
            "choices": list(SCHEDULES),
        },
    )
    neftune_schedule_warmup: float = field(
        default=0.0,
        metadata={"help": "Fraction of training over which alpha ramps linearly from 0; the schedule runs after it."},
    )
    neftune_seed: int | None = field(
        default=None,
        metadata={
            "help": "Seed of neftune's own noise generator: identical noise for the same seed whatever else uses "
            "the RNG, different per rank, reproduced on resume. None: torch's global RNG."
        },
    )
    neftune_noise_decoder_inputs: bool = field(
        default=True,
        metadata={
            "help": "Encoder-decoder models: also noise the decoder's input embeddings (the encoder's always are)."
        },
    )
    neftune_kernel: str = field(
        default="auto",
        metadata={
            "help": "How the noise is drawn and added. torch: torch ops, bit-exact with the paper's code. triton: "
            "neftune's fused one-pass kernel (pip install neftune[triton]; CUDA). auto: triton on CUDA when it "
            "imports (uniform padded noise stays on torch, bit-exact with transformers), torch otherwise.",
            "choices": list(KERNELS),
        },
    )
    neftune_clean_loss_steps: int | None = field(
        default=None,
        metadata={
            "help": "Every this many steps, log neftune/clean_train_loss: the loss of a fixed subset of training "
            "examples with the noise off. None: never."
        },
    )
    neftune_clean_loss_samples: int = field(
        default=16, metadata={"help": "How many training examples neftune/clean_train_loss is measured on."}
    )
    neftune_log_stats: bool = field(
        default=True,
        metadata={
            "help": "Log neftune/noise_rms, neftune/embed_rms and neftune/noise_to_signal at every logging step."
        },
    )

    def __post_init__(self) -> None:
        neftune_config_from_args(self)  # validate early, with the field names in the messages
        if self.neftune_clean_loss_steps is not None:
            validate_count(self.neftune_clean_loss_steps, name="neftune_clean_loss_steps", example=50, none_ok=True)
        validate_count(self.neftune_clean_loss_samples, name="neftune_clean_loss_samples", example=16)
        validate_flag(self.neftune_log_stats, name="neftune_log_stats")
        super().__post_init__()


def neftune_config_from_args(args: Any) -> NEFTuneConfig:
    """The `NEFTuneConfig` described by a (neftune or plain TRL/transformers) config; alpha None means 5."""
    alpha = getattr(args, "neftune_noise_alpha", None)
    alpha = DEFAULT_ALPHA if alpha is None else validate_alpha(alpha, name="neftune_noise_alpha")
    try:
        return NEFTuneConfig(
            alpha=alpha,
            scaling=getattr(args, "neftune_scaling", "per_sequence"),
            noise=getattr(args, "neftune_noise", "uniform"),
            schedule=getattr(args, "neftune_schedule", "constant"),
            schedule_warmup=getattr(args, "neftune_schedule_warmup", 0.0),
            seed=getattr(args, "neftune_seed", None),
            noise_decoder_inputs=getattr(args, "neftune_noise_decoder_inputs", True),
            kernel=getattr(args, "neftune_kernel", "auto"),
        )
    except NEFTuneError as error:  # name the config field, not the NEFTuneConfig one
        raise NEFTuneError(str(error).replace("NEFTune ", "neftune_", 1)) from None


class SFTTrainer(trl.SFTTrainer):  # type: ignore[misc]
    """`trl.SFTTrainer` with neftune's NEFTune: same constructor, noise on only inside `train()`.

    The alpha comes from `args.neftune_noise_alpha` (5 when unset, 0 turns it off), also when `args` is a plain
    `trl.SFTConfig`; transformers' own NEFTune hook is then never registered, so the noise is never added twice.
    Evaluation, `predict` and generation see clean embeddings. Metrics: see `NEFTuneCallback`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = neftune_config_from_args(self.args)
        # transformers' Trainer registers its own hook in train() when this attribute is set: take it over.
        took_over = getattr(self, "neftune_noise_alpha", None) is not None
        self.neftune_noise_alpha = None
        self.neftune_callback = NEFTuneCallback(
            config,
            clean_loss_steps=getattr(self.args, "neftune_clean_loss_steps", None),
            clean_loss_samples=getattr(self.args, "neftune_clean_loss_samples", 16),
            log_stats=getattr(self.args, "neftune_log_stats", True),
        )
        self.neftune_callback.attach(self)  # first: it sets up the hooks before any other callback's train begin
        source = "neftune_noise_alpha of the config" if took_over else "neftune's default"
        logger.info(
            "NEFTune: neftune's implementation is active (alpha=%s from %s, scaling=%s); transformers' own "
            "neftune_post_forward_hook is disabled.%s",
            config.alpha,
            source,
            config.scaling,
            _porting_note(self.model, config.alpha),
        )

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add the `neftune/...` entries before `Trainer.log` records `logs` and calls the reporting callbacks."""
        logs.update(self.neftune_callback.log_entries(self.state))
        super().log(logs, *args, **kwargs)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().train(*args, **kwargs)
        finally:
            self.neftune_callback.release()  # also when training raises


def _porting_note(model: Any, alpha: float) -> str:
    """On models that scale their embeddings, the same alpha means more noise than transformers' hook adds."""
    try:
        modules = [module for _, module in select_targets(model, None, None).targets]
    except NEFTuneError:
        return ""  # no embedding found: apply_neftune will say so at train begin
    factor = max((embed_scale_factor(module) for module in modules), default=1.0)
    if factor == 1.0 or alpha == 0:
        return ""
    return (
        f" This model scales its embeddings by {factor:.3g}: alpha {alpha:g} adds {factor:.3g}x the noise "
        f"transformers' hook adds for the same neftune_noise_alpha; use {alpha / factor:.3g} for the same noise."
    )


NEFTuneSFTConfig = SFTConfig
NEFTuneSFTTrainer = SFTTrainer
