"""Drop-in TRL `SFTTrainer` / `SFTConfig`: change one import and NEFTune runs with the paper's semantics.

```python
from neftune import SFTConfig, SFTTrainer  # instead of: from trl import SFTConfig, SFTTrainer
```
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, cast

import trl

from .callback import NEFTuneCallback
from .config import SCALINGS, NEFTuneConfig, Scaling, validate_alpha
from .errors import NEFTuneError

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
        super().__post_init__()


def neftune_config_from_args(args: Any) -> NEFTuneConfig:
    """The `NEFTuneConfig` described by a (neftune or plain TRL/transformers) config; alpha None means 5."""
    alpha = getattr(args, "neftune_noise_alpha", None)
    alpha = DEFAULT_ALPHA if alpha is None else validate_alpha(alpha, name="neftune_noise_alpha")
    scaling = getattr(args, "neftune_scaling", "per_sequence")
    if scaling not in SCALINGS:
        raise NEFTuneError(f"neftune_scaling must be one of {SCALINGS}, got {scaling!r}.")
    return NEFTuneConfig(alpha=alpha, scaling=cast(Scaling, scaling))


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
        self.callback_handler.callbacks.insert(0, self.neftune_callback)
        source = "neftune_noise_alpha of the config" if took_over else "neftune's default"
        logger.info(
            "NEFTune: neftune's implementation is active (alpha=%s from %s, scaling=%s); transformers' own "
            "neftune_post_forward_hook is disabled.",
            config.alpha,
            source,
            config.scaling,
        )

    def train(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().train(*args, **kwargs)
        finally:
            self.neftune_callback.release()  # also when training raises


NEFTuneSFTConfig = SFTConfig
NEFTuneSFTTrainer = SFTTrainer
