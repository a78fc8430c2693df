"""Seeing the batch layout from inside the embedding hook.

An embedding module only receives token ids, but the sequence lengths live in the `attention_mask`,
`position_ids` or `cu_seq_lens_q` given to the model. `LayoutRecorder` is a `with_kwargs` forward pre-hook
placed on every module between the model and the embedding; it records what each of those forwards was
given for the duration of that call (an always-called forward hook pops it again).

Which recorded layout belongs to an embedding call: the innermost enclosing forward that was given a layout, but
never one that was given other `input_ids` than the innermost forward given any. That innermost forward is the one
whose ids reach the embedding (a decoder stack, the base model); an outer forward given other ids (the encoder's,
in an encoder-decoder model) has a mask that describes other tokens, even when the shapes agree. An outer forward
that passed the same ids on (a block given only `input_ids` by a model given the mask too) describes them.

torch runs always-called hooks for `Exception` only, so a `KeyboardInterrupt` or `SystemExit` inside a forward
leaves its frames behind. They never outlive the next call: entering the outermost recorded module starts an empty
stack, and entering any module drops its own stale frame and everything above it.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .layout import BatchLayout
from .model_families import (
    ATTENTION_MASK_NAME,
    CU_SEQLENS_NAMES,
    INPUT_IDS_NAME,
    LAYOUT_ARGUMENT_NAMES,
    POSITION_IDS_NAME,
)

_EMPTY = BatchLayout()


class CallStack:
    """Layouts of the forwards currently running, innermost last; one stack per thread (DataParallel replicas)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._local.frames = []  # created up front: torch.compile would otherwise recompile once it appears

    def _frames(self) -> list[tuple[int, BatchLayout, torch.Tensor | None]]:
        frames: list[tuple[int, BatchLayout, torch.Tensor | None]] | None = getattr(self._local, "frames", None)
        if frames is None:
            frames = []
            self._local.frames = frames
        return frames

    def push(
        self, owner: int, layout: BatchLayout, ids: torch.Tensor | None = None, *, outermost: bool = False
    ) -> None:
        """Enter `owner`'s forward, given `layout` and `ids` (its `input_ids`); `outermost`: nothing encloses it."""
        frames = self._frames()
        if outermost:
            frames.clear()  # whatever is left belongs to calls that ended by an interrupt
        else:
            for index, frame in enumerate(frames):
                if frame[0] == owner:  # a module is not inside its own forward: that frame is stale
                    del frames[index:]
                    break
        frames.append((owner, layout, ids))

    def pop(self, owner: int) -> None:
        frames = self._frames()
        for index in range(len(frames) - 1, -1, -1):
            if frames[index][0] == owner:
                del frames[index]
                return

    def inside_any(self, owners: frozenset[int]) -> bool:
        """Whether a forward of one of these modules (by id) is running now."""
        return any(frame[0] in owners for frame in self._frames())

    def innermost(self) -> BatchLayout:
        """The layout of the embedding call now running (see the module docstring); empty if it has none."""
        embedded: torch.Tensor | None = None  # the ids of the innermost forward given any
        for _, layout, ids in reversed(self._frames()):
            if ids is not None:
                if embedded is None:
                    embedded = ids
                elif not _same_tensor(ids, embedded):
                    break  # a forward given other ids: its layout describes other tokens
            if not layout.is_empty:
                return layout
        return _EMPTY

    def depth(self) -> int:
        return len(self._frames())

    def __getstate__(self) -> dict[str, Any]:
        return {}  # frames belong to running calls; a pickled or copied model starts with none

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same ids: the same tensor, or (outside compiled code) a view of the same memory with the same shape."""
    if a is b:
        return True
    if torch.compiler.is_compiling():
        return False
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape


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

    def __init__(
        self,
        stack: CallStack,
        positions: dict[str, int],
        outermost: bool = False,
        on_enter: Callable[[nn.Module], None] | None = None,
    ) -> None:
        self.stack = stack
        self.positions = positions
        self.outermost = outermost
        self.on_enter = on_enter  # the target watch of the hooked module's parent (see apply.py)

    @classmethod
    def for_module(
        cls,
        stack: CallStack,
        module: nn.Module,
        outermost: bool = False,
        on_enter: Callable[[nn.Module], None] | None = None,
    ) -> LayoutRecorder:
        return cls(stack, _positional_indices(module), outermost, on_enter)

    def __deepcopy__(self, memo: dict[int, Any]) -> LayoutRecorder:
        # A deep copy of the model (PEFT's modules_to_save, a DPO reference model) must keep feeding the
        # same stack that its copied noise hook reads, so the stack is shared, never copied. The target watch
        # checks the original parent's slot, which a copy does not have: copies keep none.
        return LayoutRecorder(self.stack, dict(self.positions), self.outermost)

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
            attention_mask=self._argument(ATTENTION_MASK_NAME, args, kwargs),
        )
        ids = self._argument(INPUT_IDS_NAME, args, kwargs)
        self.stack.push(id(module), layout, ids, outermost=self.outermost)
        if self.on_enter is not None:
            self.on_enter(module)

    def after(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.stack.pop(id(module))
