"""Activation checkpointing: the recompute in backward must add exactly the noise the forward added.

`torch.utils.checkpoint` (reentrant or not), `checkpoint_sequential` and `apply_activation_checkpointing` run a
region's forward again during backward. An embedding inside such a region would draw fresh noise there (neftune's
own generators are not among the RNG states torch restores) and would see no layout (the enclosing forwards have
returned), so the recomputed activations, and with them the gradients, would differ from the forward's.

Every noised forward therefore leaves a `Replay`: the generator state before its draw, the per-token scale it
used, and torch's own RNG state at the call. A call of the hooked module while autograd runs a backward pass is a
recompute; it takes a replay of the same hook and input ids and draws the same noise from a copy of that state. A
recompute with no replay adds nothing: its forward added nothing either (suspended, without autograd, scheduled to
0).

One ids tensor may go through several noised forwards before their backwards (a loss per forward, backpropagated
in forward order). Checkpointing restores torch's RNG state before it recomputes, so the replay whose recorded
torch state equals the current one is the recompute's own; it is preferred. Where no recorded state matches
(`preserve_rng_state=False`) or several do (neftune's own generator and no random op between the forwards), the
newest is taken: right for a backward that runs in reverse forward order, as one loss over all of them does.

Replays are small (a generator state and one float per token), dropped when used, when training moves to the next
step, and beyond the newest `MAX_REPLAYS`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

MAX_REPLAYS = 16


def in_backward() -> bool:
    """Whether autograd is running a backward pass on this thread (where a forward call is a recompute)."""
    if torch.compiler.is_compiling():
        return False  # compiled regions trace their own recomputation
    return bool(torch._C._current_graph_task_id() != -1)


@dataclass(frozen=True)
class DrawPlan:
    """How one call turns a draw into its noise: `uniform_bound` draws `Uniform(-b, b)` directly (transformers'
    arithmetic), else unit noise times `pre_scale`; the result is then multiplied by `scale`, if any. `fused`: the
    Triton kernel draws, scales by `scale` and adds in one pass (its seed drawn from the same generator)."""

    uniform_bound: float | None
    pre_scale: float | None
    scale: torch.Tensor | None
    fused: bool = False


@dataclass(frozen=True)
class Replay:
    owner: int  # id of the NoiseHook
    ids_key: tuple[int, tuple[int, ...]]
    rng_state: torch.Tensor
    own_generator: bool  # neftune's own generator (True) or torch's default one (False)
    plan: DrawPlan
    torch_state: torch.Tensor  # torch's default generator state at the call, which checkpointing restores


def ids_key(args: tuple[object, ...]) -> tuple[int, tuple[int, ...]]:
    """Identifies the ids a call embedded: a recompute gets the same tensor, or a detached alias of its storage."""
    ids = args[0] if args else None
    if isinstance(ids, torch.Tensor):
        return ids.data_ptr(), tuple(ids.shape)
    return 0, ()


def default_generator(device: torch.device) -> torch.Generator:
    if device.type == "cpu":
        return torch.default_generator
    index = device.index if device.index is not None else torch.cuda.current_device()
    generator: torch.Generator = torch.cuda.default_generators[index]
    return generator


class ReplayStore:
    """The replays of one application's noised forwards, newest last."""

    def __init__(self) -> None:
        self._replays: deque[Replay] = deque(maxlen=MAX_REPLAYS)
        self.evicted = 0  # replays pushed out by newer ones since the last clear: a recompute may miss its own

    def add(self, replay: Replay) -> None:
        if len(self._replays) == MAX_REPLAYS:
            self.evicted += 1
        self._replays.append(replay)

    def take(
        self, owner: int, key: tuple[int, tuple[int, ...]], torch_state: Callable[[], torch.Tensor]
    ) -> Replay | None:
        """The replay of `owner`'s call on these ids whose torch RNG state is `torch_state()` (read only when
        several match), else its newest."""
        matching = [i for i in range(len(self._replays) - 1, -1, -1) if self._matches(i, owner, key)]
        if not matching:
            return None
        index = matching[0]
        if len(matching) > 1:
            now = torch_state()
            index = next((i for i in matching if torch.equal(self._replays[i].torch_state, now)), index)
        replay = self._replays[index]
        del self._replays[index]
        return replay

    def _matches(self, index: int, owner: int, key: tuple[int, tuple[int, ...]]) -> bool:
        replay = self._replays[index]
        return replay.owner == owner and replay.ids_key == key

    def clear(self) -> None:
        self._replays.clear()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._replays)
