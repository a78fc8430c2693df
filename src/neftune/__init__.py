"""NEFTune (noisy embedding fine-tuning, Jain et al. 2023) as a one-line, correct part of the PyTorch/HF stack.

`import neftune` needs only torch; the trainer integrations load lazily and name the extra they need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._lazy import LAZY_NAMES, load_lazy
from ._version import __version__
from .apply import NEFTuneHandle, apply_neftune, disable_noise, is_neftune_active, remove_neftune
from .config import NEFTuneConfig
from .errors import NEFTuneError
from .eval_mode import clean_evaluation
from .integrations.transformers_patch import TransformersPatch, patch_transformers, unpatch_transformers
from .monitor import NoiseMonitor
from .stats import NoiseStats

if TYPE_CHECKING:
    from .integrations.callback import NEFTuneCallback
    from .integrations.sft_trainer import NEFTuneSFTConfig, NEFTuneSFTTrainer, SFTConfig, SFTTrainer

__all__ = [
    "NEFTuneCallback",
    "NEFTuneConfig",
    "NEFTuneError",
    "NEFTuneHandle",
    "NEFTuneSFTConfig",
    "NEFTuneSFTTrainer",
    "NoiseMonitor",
    "NoiseStats",
    "SFTConfig",
    "SFTTrainer",
    "TransformersPatch",
    "__version__",
    "apply_neftune",
    "clean_evaluation",
    "disable_noise",
    "is_neftune_active",
    "patch_transformers",
    "remove_neftune",
    "unpatch_transformers",
]


def __getattr__(name: str) -> Any:
    if name in LAZY_NAMES:
        value = load_lazy(name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'neftune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(LAZY_NAMES))
