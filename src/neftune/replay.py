"""Activation checkpointing: the recompute in backward must add exactly the noise the forward added.

`torch.utils.checkpoint` (reentrant or not), `checkpoint_sequential` and `apply_activation_checkpointing` run a
region's forward again during backward. An embedding inside such a region would draw fresh noise there (neftune's
own generators are not among the RNG states torch restores) and would see no layout (the enclosing forwards have
returned), so the recomputed activations, and with them the gradients, would differ from the forward's.

Every forward in training mode therefore leaves a `Replay`: the generator state before its draw, the per-token
scale it used, and torch's own RNG state at the call; a forward that added nothing (suspended, scheduled to 0)
leaves one without a plan, which replays as nothing. A call of the hooked module while autograd
runs a backward pass is a recompute; it takes a replay of the same hook and input ids and draws the same noise
from a copy of that state. A recompute with no replay at all adds nothing.

A replay stays after its recompute: nested checkpoints recompute one forward twice in one backward (the outer
region's recompute runs the inner region, whose own recompute runs it again), and a second backward of a graph
kept with `retain_graph=True` recomputes it again. Each must add the forward's noise.

One ids tensor may go through several forwards before their backwards (a loss per forward, backpropagated in
forward order). Checkpointing restores torch's RNG state before it recomputes, so the replays whose recorded
torch state equals the current one are the recompute's candidates. Among the candidates (all of the ids' replays
where none matches, `preserve_rng_state=False`) the least recomputed is taken, the newest of those first: right
for a backward that runs in reverse forward order, as one loss over all of them does. Where torch's state cannot
tell forwards apart (neftune's own generator, no random op between them, or `preserve_rng_state=False`) and their
backwards run in forward order, a recompute takes a later forward's noise.

Replays are small (a generator state and one float per token), dropped when training moves to the next step and
beyond the newest `MAX_REPLAYS`: replays already recomputed go first, then noiseless ones, which never push out a
noised replay still to be recomputed. Forwards skipped for running without autograd (`skip_no_grad`: generation,
reference models) leave none: they build no graph to recompute.
"""

from __future__ import annotations

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
    plan: DrawPlan | None  # None: the forward added no noise (suspended, scheduled to 0)
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
    """The replays of one application's forwards, oldest first, each with how often a recompute took it."""

    def __init__(self) -> None:
        self._replays: list[Replay] = []
        self._uses: list[int] = []
        self.evicted = 0  # never-recomputed replays pushed out since the last clear: a recompute may miss its own

    def add(self, replay: Replay) -> None:
        if len(self._replays) == MAX_REPLAYS:
            # make room: a replay already recomputed, else the oldest that adds no noise; a noiseless replay never
            # pushes out one whose noise is still to be recomputed
            used = next((i for i, uses in enumerate(self._uses) if uses), None)
            silent = next((i for i, r in enumerate(self._replays) if r.plan is None), None)
            if used is None and silent is None and replay.plan is None:
                return
            if used is None and silent is None:
                self.evicted += 1
            self._drop(used if used is not None else silent if silent is not None else 0)
        self._replays.append(replay)
        self._uses.append(0)

    def take(
        self, owner: int, key: tuple[int, tuple[int, ...]], torch_state: Callable[[], torch.Tensor]
    ) -> Replay | None:
        """The replay of `owner`'s call on these ids for this recompute: among those whose torch RNG state is
        `torch_state()` (read only when several match; all of them where none is), the least taken, newest first."""
        matching = [i for i, r in enumerate(self._replays) if r.owner == owner and r.ids_key == key]
        if not matching:
            return None
        if len(matching) > 1:
            now = torch_state()
            matching = [i for i in matching if torch.equal(self._replays[i].torch_state, now)] or matching
        index = min(matching, key=lambda i: (self._uses[i], -i))  # fewest uses, then the newest
        self._uses[index] += 1
        return self._replays[index]

    def _drop(self, index: int) -> None:
        del self._replays[index]
        del self._uses[index]

    def clear(self) -> None:
        self._replays.clear()
        self._uses.clear()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._replays)
