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
from ..options import ALPHA, FIELD_OPTIONS, NOISE_OPTIONS, TRAINER_OPTIONS, Option

logger = logging.getLogger("neftune")

try:  # the plugin base class, when axolotl is installed; the plugin's logic needs only transformers
    from axolotl.integrations.base import BasePlugin as _PluginBase
except ImportError:  # pragma: no cover - depends on the environment
    _PluginBase = object

_YAML_OPTIONS = tuple(option for option in FIELD_OPTIONS if option is not ALPHA)  # the alpha is axolotl's own
_CONFIG_OPTIONS = tuple(option for option in NOISE_OPTIONS if option is not ALPHA)


def _yaml_type(option: Option[Any]) -> Any:
    """Every key is optional (None: the plugin's default); choices are checked by axolotl's schema."""
    kind: Any = Literal.__getitem__(option.choices) if option.choices else option.value_type
    return kind | None


def _yaml_schema() -> type:
    """`NEFTuneArgs`, one `neftune_<name>` field per option of neftune.options but the alpha."""
    fields: dict[str, Any] = {option.field_name: (_yaml_type(option), None) for option in _YAML_OPTIONS}
    doc = "The YAML options the plugin adds to axolotl's schema (`neftune_noise_alpha` is axolotl's own)."
    try:
        from pydantic import create_model
    except ImportError:  # pragma: no cover - pydantic ships with transformers' and axolotl's dependencies
        annotations = {name: kind for name, (kind, _) in fields.items()}
        return type("NEFTuneArgs", (), {"__doc__": doc, "__annotations__": annotations, **dict.fromkeys(fields)})
    schema: type = create_model("NEFTuneArgs", __doc__=doc, __module__=__name__, **fields)
    return schema


NEFTuneArgs = _yaml_schema()


def _option(cfg: Any, name: str) -> Any:
    return cfg.get(name) if isinstance(cfg, dict) else getattr(cfg, name, None)


def config_from_cfg(cfg: Any) -> NEFTuneConfig | None:
    """The noise an axolotl config asks for, or None when `neftune_noise_alpha` is unset or 0."""
    alpha = _option(cfg, ALPHA.field_name)
    if alpha is None:
        return None
    alpha = validate_alpha(alpha, name=ALPHA.field_name)
    if alpha == 0:
        return None
    options = {option.name: _option(cfg, option.field_name) for option in _CONFIG_OPTIONS}
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
        options: dict[str, Any] = {}  # the trainer options the YAML sets; the others keep the callback's defaults
        for option in TRAINER_OPTIONS:
            value = _option(cfg, option.field_name)
            if value is not None:
                options[option.name] = option.validate(value, f"axolotl config: {option.field_name}")
        NEFTuneCallback(config, **options).attach(trainer)  # ahead of the reporting callbacks, which read `logs`
        logger.info(
            "neftune axolotl plugin: %s gets neftune's NEFTune (alpha %s, %s) in place of transformers' hook",
            type(trainer).__name__,
            config.alpha,
            config.scaling,
        )
