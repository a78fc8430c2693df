"""Finding and removing neftune's hooks on any module, including copies of hooked modules.

Hooks are recognised by their type (a deep copy keeps it), not by handles, because PEFT and reference-model
creation deep-copy hooked modules and the copies' hooks belong to no `RemovableHandle`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import nn

from .call_context import CallStack, LayoutRecorder
from .hook import NoiseHook
from .state import NoiseState

# nn.Module's hook dictionaries: the hooks themselves, then the per-id flags torch keeps beside them.
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks")
_FLAG_DICTS = ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


def _stack_of(hook: Any) -> CallStack | None:
    """The call stack that identifies the application a hook belongs to, or None if the hook is not ours."""
    if isinstance(hook, NoiseHook):
        return hook.state.stack
    owner = getattr(hook, "__self__", None)
    if isinstance(owner, LayoutRecorder):
        return owner.stack
    return None


def noise_hooks(module: nn.Module) -> Iterator[NoiseHook]:
    """neftune's noise hooks registered directly on `module`."""
    for hook in module._forward_hooks.values():
        if isinstance(hook, NoiseHook):
            yield hook


def noise_states(model: nn.Module) -> list[NoiseState]:
    """Every distinct application of neftune found anywhere in `model`."""
    states: dict[int, NoiseState] = {}
    for module in model.modules():
        for hook in noise_hooks(module):
            states.setdefault(id(hook.state), hook.state)
    return list(states.values())


def remove_hooks(model: nn.Module, state: NoiseState | None = None) -> int:
    """Remove neftune hooks (of `state` only, if given) from every module of `model`; returns noise hooks removed."""
    removed = 0
    for module in model.modules():
        for dict_name in _HOOK_DICTS:
            hooks = getattr(module, dict_name)
            doomed = [
                key
                for key, hook in hooks.items()
                if (stack := _stack_of(hook)) is not None and (state is None or stack is state.stack)
            ]
            for key in doomed:
                removed += isinstance(hooks.pop(key), NoiseHook)
                for flag_name in _FLAG_DICTS:
                    getattr(module, flag_name, {}).pop(key, None)
    return removed
