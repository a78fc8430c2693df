"""Drop-in TRL `SFTTrainer` / `SFTConfig`: change one import and NEFTune runs with the paper's semantics.

```python
from neftune import SFTConfig, SFTTrainer  # instead of: from trl import SFTConfig, SFTTrainer
```
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import field, make_dataclass
from typing import TYPE_CHECKING, Any

import trl

from ..config import NEFTuneConfig
from ..discovery import select_targets
from ..errors import NEFTuneError
from ..model_families import CU_SEQLENS_NAMES, POSITION_IDS_NAME, embed_scale_factor
from ..options import ALPHA, FIELD_OPTIONS, NOISE_OPTIONS, TRAINER_OPTIONS, Option
from .callback import NEFTuneCallback

logger = logging.getLogger("neftune")


def neftune_config_from_args(args: Any) -> NEFTuneConfig:
    """The `NEFTuneConfig` described by a (neftune or plain TRL/transformers) config; alpha None means the default.

    A field the config lacks takes the option's default; an error names the field (`neftune_scaling`)."""
    return NEFTuneConfig(**{option.name: _field_value(args, option) for option in NOISE_OPTIONS})


def trainer_options_from_args(args: Any) -> dict[str, Any]:
    """`NEFTuneCallback`'s keyword arguments (`clean_loss_steps`, ...) from a config's `neftune_*` fields."""
    return {option.name: _field_value(args, option) for option in TRAINER_OPTIONS}


def _field_value(args: Any, option: Option[Any]) -> Any:
    value = getattr(args, option.field_name, option.default)
    if option is ALPHA and value is None:  # transformers' own field, where None means "not set"
        value = ALPHA.default
    return option.validate(value, option.field_name)


def _field_type(option: Option[Any]) -> Any:
    # neftune_noise_alpha overrides TrainingArguments' own `float | None` field and keeps its type.
    return option.value_type | None if option.default is None or option is ALPHA else option.value_type


def _field(option: Option[Any]) -> Any:
    """The dataclass field HfArgumentParser (so TRL's CLI and `neftune sft`) reads: default, help, choices."""
    help_text = option.help + (f" None means the default, {ALPHA.default:g}." if option is ALPHA else "")
    metadata: dict[str, Any] = {"help": help_text}
    if option.choices:
        metadata["choices"] = list(option.choices)
    return field(default=option.default, metadata=metadata)


class _CheckedSFTConfig(trl.SFTConfig):  # type: ignore[misc]
    """Refuses bad `neftune_*` values when the config is built, naming the field, before TRL's own checks."""

    def __post_init__(self) -> None:
        neftune_config_from_args(self)
        trainer_options_from_args(self)
        super().__post_init__()


if TYPE_CHECKING:  # a class to type checkers, so that user code can subclass it and name it in annotations

    class SFTConfig(_CheckedSFTConfig):
        """What type checkers see of the class generated below (its `neftune_*` fields are not declared here)."""

else:  # generated from neftune.options: one `neftune_<name>` field per option, in the table's order
    SFTConfig = make_dataclass(
        "SFTConfig",
        [(option.field_name, _field_type(option), _field(option)) for option in FIELD_OPTIONS],
        bases=(_CheckedSFTConfig,),
        namespace={
            "__module__": __name__,
            "__doc__": "`trl.SFTConfig` with NEFTune on by default (alpha 5) and every option of `neftune.options` "
            "as a `neftune_*` field: the noise (`neftune_noise_alpha`, `neftune_scaling`, ...) and the trainer's "
            "(`neftune_clean_loss_steps`, ...).",
        },
    )


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
        self.neftune_callback = NEFTuneCallback(config, **trainer_options_from_args(self.args))
        self.neftune_callback.attach(self)  # first: it sets up the hooks before any other callback's train begin
        self._neftune_checked_batch = False
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
        logs.update(self.neftune_callback.log_entries(self.state, logs))
        super().log(logs, *args, **kwargs)

    def training_step(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._neftune_checked_batch:  # the first batch shows what the collator gives every one
            self._neftune_checked_batch = True
            _warn_if_packed_rows_have_no_boundaries(self.args, inputs, self.neftune_callback.config.alpha)
        return super().training_step(model, inputs, *args, **kwargs)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().train(*args, **kwargs)
        finally:
            self.neftune_callback.release()  # also when training raises


BOUNDARY_KEYS = (*CU_SEQLENS_NAMES, POSITION_IDS_NAME)  # what neftune's layout reads sequence boundaries from


def _warn_if_packed_rows_have_no_boundaries(args: Any, inputs: Any, alpha: float) -> None:
    """Packed or padding-free rows without position_ids or cu_seq_lens are one sequence to the model and to neftune.

    `padding_free=True` flattens a batch into one row like packing does; TRL 0.19 gives it position_ids only
    under flash attention."""
    packing, padding_free = bool(getattr(args, "packing", False)), bool(getattr(args, "padding_free", False))
    if not (packing or padding_free) or not isinstance(inputs, Mapping):
        return
    if any(inputs.get(key) is not None for key in BOUNDARY_KEYS) or alpha == 0:
        return
    if packing:
        setting = f"packing=True (packing_strategy={getattr(args, 'packing_strategy', None)!r}"
        setting += ", padding_free=True)" if padding_free else ")"
    else:
        setting = "padding_free=True"
    warnings.warn(
        f"NEFTune: {setting} with TRL {trl.__version__}, but the training batches carry no sequence boundaries (no "
        "position_ids or cu_seq_lens_q): each packed row reaches the model as one sequence, so attention crosses "
        "example boundaries and NEFTune's L is the row's length, not each example's. TRL passes boundaries with "
        "packing_strategy='bfd' (named 'ffd' in TRL 0.19) and with padding_free=True, in TRL 0.19 to 0.22 only "
        "under attn_implementation='flash_attention_2'; packing_strategy='wrapped' without padding_free never does.",
        RuntimeWarning,
        stacklevel=2,
    )


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
