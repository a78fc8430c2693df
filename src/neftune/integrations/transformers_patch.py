"""`patch_transformers()`: neftune's NEFTune for every transformers `Trainer` that sets `neftune_noise_alpha`.

Frameworks (axolotl, LLaMA-Factory, unsloth, TRL scripts) pass `neftune_noise_alpha` to transformers' own hook,
which takes `L` as the padded row length (wrong under packing) and noises padding. One call at the top of a
script routes all of them to neftune instead:

```python
import neftune

neftune.patch_transformers()  # or patch_transformers(NEFTuneConfig(alpha=5.0, ...)) to set it for every Trainer
```

How: `Trainer.train` is wrapped. For a trainer whose `neftune_noise_alpha` is set (or every trainer, when the
patch was given a config), the wrapper clears that attribute for the duration of `train()` (so neither
transformers' `activate_neftune` of transformers >= 5.2 nor `Trainer._activate_neftune` of 4.46 to 5.1 registers
its hook), attaches a `NEFTuneCallback` (`NEFTuneCallback.attach`: public `pop_callback`/`add_callback`), and
removes both in a `finally`: the hooks are gone after an exception too, and a retry replaces them instead of
stacking a second hook. Trainers that already run a `NEFTuneCallback` (neftune's drop-in `SFTTrainer`) are left alone.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ..config import NEFTuneConfig, as_config, validate_alpha
from ..options import ON_SILENT, OnSilent

logger = logging.getLogger("neftune")


@dataclass(frozen=True)
class PatchSettings:
    """What a patched `Trainer.train` applies: `config` None means "each trainer's own neftune_noise_alpha"."""

    config: NEFTuneConfig | None
    clean_loss_steps: int | None = None
    log_stats: bool = True
    on_silent: OnSilent = ON_SILENT.default


class TransformersPatch:
    """The active patch; `unpatch_transformers()` or leaving its `with` block restores `Trainer.train`."""

    def __init__(self, settings: PatchSettings) -> None:
        self.settings = settings

    def __enter__(self) -> TransformersPatch:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        unpatch_transformers()

    def __repr__(self) -> str:
        return f"TransformersPatch({self.settings})"


_active: TransformersPatch | None = None
_original_train: Callable[..., Any] | None = None


def patch_transformers(
    alpha_or_config: float | NEFTuneConfig | None = None,
    *,
    clean_loss_steps: int | None = None,
    log_stats: bool = True,
    on_silent: OnSilent = ON_SILENT.default,
) -> TransformersPatch:
    """Route NEFTune of every transformers `Trainer` (and TRL's, axolotl's, LLaMA-Factory's) to neftune.

    Args:
        alpha_or_config (`float`, `NEFTuneConfig` or `None`, defaults to `None`):
            None: every trainer whose `neftune_noise_alpha` is set gets neftune's noise with that alpha (the
            other options at their defaults: per-sequence `L`, no noise on padding). A number or a config: every
            trainer gets this noise, whatever its own `neftune_noise_alpha` says (0 turns NEFTune off).
        clean_loss_steps, log_stats, on_silent: passed to the `NEFTuneCallback` (see there).

    Returns:
        `TransformersPatch`: a context manager that undoes the patch. Calling again replaces the settings (the
        wrapper is installed once).
    """
    global _active, _original_train
    config = None if alpha_or_config is None else as_config(alpha_or_config)
    on_silent = ON_SILENT.validate(on_silent)
    try:
        import transformers
    except ImportError as error:
        raise ImportError(
            "neftune.patch_transformers needs the 'transformers' extra; run: pip install \"neftune[transformers]\""
        ) from error

    if _original_train is None:
        _original_train = transformers.Trainer.train
        transformers.Trainer.train = _patched(_original_train)  # type: ignore[method-assign]
    _active = TransformersPatch(PatchSettings(config, clean_loss_steps, log_stats, on_silent))
    logger.info("neftune patched transformers.Trainer.train: %s", _describe(_active.settings))
    return _active


def unpatch_transformers() -> None:
    """Restore transformers' own `Trainer.train`; idempotent."""
    global _active, _original_train
    if _original_train is not None:
        import transformers

        transformers.Trainer.train = _original_train  # type: ignore[method-assign]
    _active = None
    _original_train = None


def is_transformers_patched() -> bool:
    return _active is not None


def _describe(settings: PatchSettings) -> str:
    if settings.config is None:
        return "trainers that set neftune_noise_alpha get neftune's per-sequence noise with that alpha"
    return f"every trainer gets NEFTune alpha {settings.config.alpha:g} ({settings.config.scaling})"


def config_for(trainer: Any, settings: PatchSettings) -> NEFTuneConfig | None:
    """The noise this trainer gets under the patch, or None for none."""
    own = getattr(trainer, "neftune_noise_alpha", None)
    if settings.config is not None:
        return settings.config if settings.config.alpha > 0 else None
    if own is None:
        return None
    alpha = validate_alpha(own, name="neftune_noise_alpha")
    return NEFTuneConfig(alpha=alpha) if alpha > 0 else None


def _patched(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def train(self: Any, *args: Any, **kwargs: Any) -> Any:
        from .callback import NEFTuneCallback

        settings = _active.settings if _active is not None else None
        handler = getattr(self, "callback_handler", None)
        already = handler is not None and any(isinstance(cb, NEFTuneCallback) for cb in handler.callbacks)
        config = None if settings is None or already else config_for(self, settings)
        if config is None or settings is None:
            return original(self, *args, **kwargs)
        callback = NEFTuneCallback(
            config,
            clean_loss_steps=settings.clean_loss_steps,
            log_stats=settings.log_stats,
            on_silent=settings.on_silent,
        )
        own_alpha = getattr(self, "neftune_noise_alpha", None)
        self.neftune_noise_alpha = None  # transformers' hook is never registered
        callback.attach(self)  # ahead of the reporting callbacks, which read its entries in `logs`
        logger.info(
            "NEFTune: neftune's implementation replaces transformers' hook for %s (alpha %s, %s)",
            type(self).__name__,
            config.alpha,
            config.scaling,
        )
        try:
            return original(self, *args, **kwargs)
        finally:
            callback.release()
            if callback in self.callback_handler.callbacks:  # user code may have removed it; keep its exception
                self.remove_callback(callback)
            self.neftune_noise_alpha = own_alpha

    setattr(train, "__neftune_patched__", True)  # noqa: B010
    return train
