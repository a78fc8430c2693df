"""Seeing the batch layout from inside the embedding hook.

An embedding module only receives token ids, but the sequence lengths live in the `attention_mask`,
`position_ids` or `cu_seq_lens_q` given to the model. `LayoutRecorder` is a `with_kwargs` forward pre-hook
placed on every module between the model and the embedding; it records what each of those forwards was
given for exactly the duration of that call (an always-called forward hook pops it again), so the
embedding hook reads the innermost enclosing call's layout and no state outlives the call.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any

import torch
from torch import nn

from .layout import CU_SEQLENS_NAMES, LAYOUT_ARGUMENT_NAMES, POSITION_IDS_NAME, BatchLayout

_EMPTY = BatchLayout()


class CallStack:
    """Layouts of the forwards currently running, innermost last; one stack per thread (DataParallel replicas)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._local.frames = []  # created up front: torch.compile would otherwise recompile once it appears

    def _frames(self) -> list[tuple[int, BatchLayout]]:
        frames: list[tuple[int, BatchLayout]] | None = getattr(self._local, "frames", None)
        if frames is None:
            frames = []
            self._local.frames = frames
        return frames

    def push(self, owner: int, layout: BatchLayout) -> None:
        self._frames().append((owner, layout))

    def pop(self, owner: int) -> None:
        frames = self._frames()
        for index in range(len(frames) - 1, -1, -1):
            if frames[index][0] == owner:
                del frames[index]
                return

    def inside_any(self, owners: frozenset[int]) -> bool:
        """Whether a forward of one of these modules (by id) is running now."""
        return any(owner in owners for owner, _ in self._frames())

    def innermost(self) -> BatchLayout:
        for _, layout in reversed(self._frames()):
            if not layout.is_empty:
                return layout
        return _EMPTY

    def __getstate__(self) -> dict[str, Any]:
        return {}  # frames belong to running calls; a pickled or copied model starts with none

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]


def _positional_indices(module: nn.Module) -> dict[str, int]:
    """Which positional slot of `module.forward` carries each layout argument, if any."""
    try:
        parameters = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    positional = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return {name: positional.index(name) for name in LAYOUT_ARGUMENT_NAMES if name in positional}


class LayoutRecorder:
    """Forward pre-hook (with kwargs) + always-called forward hook that bracket one module's forward."""

    def __init__(self, stack: CallStack, positions: dict[str, int]) -> None:
        self.stack = stack
        self.positions = positions

    @classmethod
    def for_module(cls, stack: CallStack, module: nn.Module) -> LayoutRecorder:
        return cls(stack, _positional_indices(module))

    def __deepcopy__(self, memo: dict[int, Any]) -> LayoutRecorder:
        # A deep copy of the model (PEFT's modules_to_save, a DPO reference model) must keep feeding the
        # same stack that its copied noise hook reads, so the stack is shared, never copied.
        return LayoutRecorder(self.stack, dict(self.positions))

    def _argument(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
        value = kwargs.get(name)
        if value is None and name in self.positions and self.positions[name] < len(args):
            value = args[self.positions[name]]
        return value if isinstance(value, torch.Tensor) else None

    def before(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        cu_seqlens = None
        for name in CU_SEQLENS_NAMES:
            cu_seqlens = self._argument(name, args, kwargs)
            if cu_seqlens is not None:
                break
        layout = BatchLayout(
            cu_seqlens=cu_seqlens,
            position_ids=self._argument(POSITION_IDS_NAME, args, kwargs),
            attention_mask=self._argument("attention_mask", args, kwargs),
        )
        self.stack.push(id(module), layout)

    def after(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.stack.pop(id(module))
