"""The axolotl plugin: neftune's NEFTune for every axolotl trainer, SFT and RL alike.

In the YAML (listed explicitly; neftune registers no entry point):

```yaml
plugins:
  - neftune.integrations.axolotl.NEFTunePlugin
neftune_noise_alpha: 5          # axolotl's own option; the plugin takes it over
neftune_scaling: per_sequence   # optional: every NEFTuneConfig option as neftune_<name>
```

axolotl passes `neftune_noise_alpha` to transformers' hook for SFT (whose `L` is the packed row's length under
`sample_packing`) and drops it silently for DPO/KTO/ORPO/GRPO. The plugin reads it from the config instead, turns
transformers' hook off on the trainer it is given, and adds a `NEFTuneCallback` (per-segment `L` from the
packing collator's `position_ids` / `cu_seq_lens_q`, metrics in the logs, reference forwards left clean).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from ..config import NEFTuneConfig, validate_alpha
from ..errors import NEFTuneError

logger = logging.getLogger("neftune")

try:  # the plugin base class, when axolotl is installed; the plugin's logic needs only transformers
    from axolotl.integrations.base import BasePlugin as _PluginBase
except ImportError:  # pragma: no cover - depends on the environment
    _PluginBase = object

try:
    from pydantic import BaseModel
except ImportError:  # pragma: no cover - pydantic ships with transformers' and axolotl's dependencies
    BaseModel = object  # type: ignore[assignment,misc]


class NEFTuneArgs(BaseModel):
    """The YAML options the plugin adds to axolotl's schema (`neftune_noise_alpha` is axolotl's own)."""

    neftune_scaling: Literal["per_sequence", "padded"] | None = None
    neftune_noise: Literal["uniform", "gaussian", "symmetric"] | None = None
    neftune_schedule: Literal["constant", "linear", "cosine"] | None = None
    neftune_schedule_warmup: float | None = None
    neftune_seed: int | None = None
    neftune_noise_decoder_inputs: bool | None = None
    neftune_clean_loss_steps: int | None = None
    neftune_log_stats: bool | None = None


_CONFIG_FIELDS = ("scaling", "noise", "schedule", "schedule_warmup", "seed", "noise_decoder_inputs")


def _option(cfg: Any, name: str) -> Any:
    return cfg.get(name) if isinstance(cfg, dict) else getattr(cfg, name, None)


def config_from_cfg(cfg: Any) -> NEFTuneConfig | None:
    """The noise an axolotl config asks for, or None when `neftune_noise_alpha` is unset or 0."""
    alpha = _option(cfg, "neftune_noise_alpha")
    if alpha is None:
        return None
    alpha = validate_alpha(alpha, name="neftune_noise_alpha")
    if alpha == 0:
        return None
    options = {name: _option(cfg, f"neftune_{name}") for name in _CONFIG_FIELDS}
    try:
        return NEFTuneConfig(alpha=alpha, **{name: value for name, value in options.items() if value is not None})
    except NEFTuneError as error:
        raise NEFTuneError(f"axolotl config: {error}") from None


class NEFTunePlugin(_PluginBase):  # type: ignore[misc]
    """axolotl plugin; see the module docstring."""

    def get_input_args(self) -> str:
        return "neftune.integrations.axolotl.NEFTuneArgs"

    def post_trainer_create(self, cfg: Any, trainer: Any) -> None:
        from .callback import NEFTuneCallback

        config = config_from_cfg(cfg)
        if config is None:
            logger.info("neftune axolotl plugin: neftune_noise_alpha is not set; no NEFTune.")
            return
        trainer.neftune_noise_alpha = None  # transformers' hook is never registered
        clean_loss_steps = _option(cfg, "neftune_clean_loss_steps")
        log_stats = _option(cfg, "neftune_log_stats")
        NEFTuneCallback(
            config, clean_loss_steps=clean_loss_steps, log_stats=True if log_stats is None else log_stats
        ).attach(trainer)  # ahead of the reporting callbacks, which read its entries in `logs`
        logger.info(
            "neftune axolotl plugin: %s gets neftune's NEFTune (alpha %s, %s) in place of transformers' hook",
            type(trainer).__name__,
            config.alpha,
            config.scaling,
        )
