"""Lazy loading of the names that need an optional extra, so `import neftune` needs only torch."""

from __future__ import annotations

import importlib
from typing import Any

# public name -> (module that defines it, extra that provides its dependencies)
LAZY_NAMES: dict[str, tuple[str, str]] = {
    "NEFTuneCallback": ("neftune.integrations.callback", "transformers"),
    "NEFTuneSFTConfig": ("neftune.integrations.sft_trainer", "trl"),
    "NEFTuneSFTTrainer": ("neftune.integrations.sft_trainer", "trl"),
    "SFTConfig": ("neftune.integrations.sft_trainer", "trl"),
    "SFTTrainer": ("neftune.integrations.sft_trainer", "trl"),
}


def load_lazy(name: str) -> Any:
    """Import the module behind `name`, turning a missing dependency into the `pip install` to run."""
    module_name, extra = LAZY_NAMES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        missing = getattr(error, "name", None) or str(error)
        raise ImportError(
            f"neftune.{name} needs the '{extra}' extra ({missing} is not installed); "
            f'run: pip install "neftune[{extra}]"'
        ) from error
    return getattr(module, name)
