"""Noticing that a hooked embedding was wrapped or replaced after `apply_neftune`.

Hooks sit on module objects. When PEFT wraps the hooked embedding later (`get_peft_model` with LoRA on the
embedding, `trainable_token_indices`, `modules_to_save`), the model calls the wrapper: LoRA's delta would land after
the noise, and a trainable-tokens wrapper never calls the hooked module at all. `resize_token_embeddings`,
`set_input_embeddings` or `merge_and_unload` swap the module out, and the noise would silently stop.

The parent of each hooked module checks its slot at every training forward (one dict lookup). A PEFT wrapper around
the hooked module takes the hook over, exactly as if NEFTune had been applied after PEFT; any other replacement is
an error that says to apply NEFTune again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .discovery import is_peft_layer_wrapper
from .errors import NEFTuneError


@dataclass
class WatchedSlot:
    """`parent._modules[name]` held `target` when NEFTune was applied."""

    parent_id: int
    name: str
    path: str
    target: nn.Module


class TargetWatch:
    """The slots of one application's hooked modules, and what to do when one changes."""

    def __init__(self, rehook: Callable[[nn.Module, nn.Module, str], None]) -> None:
        self.slots: list[WatchedSlot] = []
        self._rehook = rehook  # (old target, new outer module, path): move this application's hook outward

    def watch(self, parent: nn.Module, name: str, path: str, target: nn.Module) -> None:
        self.slots.append(WatchedSlot(id(parent), name, path, target))

    def check(self, parent: nn.Module) -> None:
        """Called when `parent`'s forward starts."""
        if not parent.training or torch.compiler.is_compiling():
            return  # no noise outside training; compiled graphs guard on the module structure themselves
        for slot in self.slots:
            if slot.parent_id != id(parent):
                continue
            current = parent._modules.get(slot.name)
            if current is slot.target:
                continue
            if isinstance(current, nn.Module) and _wraps(current, slot.target):
                if not _calls_hooked_copies(current):
                    self._rehook(slot.target, current, slot.path)
                slot.target = current
                continue
            raise NEFTuneError(
                f"NEFTune hooked '{slot.path}', but the model now holds "
                f"{type(current).__name__ if current is not None else 'nothing'} there (resize_token_embeddings, "
                "set_input_embeddings or merge_and_unload replace the embedding), so no noise would be added. "
                "Call remove_neftune(model), then apply_neftune again on the changed model."
            )


def _wraps(outer: nn.Module, target: nn.Module) -> bool:
    """`outer` is a PEFT layer wrapper with `target` inside it."""
    return is_peft_layer_wrapper(outer) and any(module is target for module in outer.modules())


def _calls_hooked_copies(wrapper: nn.Module) -> bool:
    """PEFT's `modules_to_save` wrapper calls the original or a deep copy of it, and copies keep our hook: the
    noise already lands on what the model receives, so nothing moves (other wrappers add to or bypass the module)."""
    return type(wrapper).__name__ == "ModulesToSaveWrapper"
