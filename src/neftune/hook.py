"""The forward hook that adds NEFTune noise to an embedding module's output."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .call_context import CallStack
from .config import NEFTuneConfig
from .errors import NEFTuneError
from .layout import scalar_magnitude, token_magnitudes
from .noise import draw_unit_noise
from .rng import NoiseGenerators
from .schedule import alpha_factor
from .stats import StatsAccumulator


@dataclass
class CallCounts:
    """Plain-int counters (no device work) of why hooked forwards did or did not add noise."""

    noised: int = 0
    eval_mode: int = 0
    suspended: int = 0
    no_grad: int = 0
    scheduled_off: int = 0  # the schedule put alpha at exactly 0 (warmup start, end of a decay)

    @property
    def total(self) -> int:
        return self.noised + self.eval_mode + self.suspended + self.no_grad + self.scheduled_off


class NoiseState:
    """What one `apply_neftune` call shares between its hooks: config, call stack, switches and counters."""

    def __init__(self, config: NEFTuneConfig, *, skip_no_grad: bool = False, track_stats: bool = False) -> None:
        self.config = config
        self.stack = CallStack()
        self.suspended = 0  # > 0 inside `disable_noise`; a counter so the context manager nests
        self.skip_no_grad = skip_no_grad
        self.stats = StatsAccumulator() if track_stats else None
        self.warned_unmatched_layout = False
        self.counts = CallCounts()
        self.generators = NoiseGenerators(config.seed) if config.seed is not None else None
        self.progress = 0.0
        self.alpha = config.alpha * alpha_factor(config.schedule, config.schedule_warmup, 0.0)

    def set_progress(self, progress: float) -> None:
        self.progress = progress
        self.alpha = self.config.alpha * alpha_factor(self.config.schedule, self.config.schedule_warmup, progress)

    def generator_for(self, device: torch.device) -> torch.Generator | None:
        return None if self.generators is None else self.generators.for_device(device)

    @property
    def enabled(self) -> bool:
        return self.suspended == 0


def _as_batch(output: torch.Tensor, module_name: str) -> torch.Tensor | None:
    """View `output` as (batch, seq_len, hidden); None for 0-D/1-D probe outputs that must pass untouched."""
    if output.dim() == 3:
        return output
    if output.dim() == 2:  # (seq_len, hidden): one unbatched sequence, e.g. flattened VLM text
        return output.unsqueeze(0)
    if output.dim() < 2:
        return None
    raise NEFTuneError(
        f"NEFTune expects the output of '{module_name}' to be (batch, seq_len, hidden) or (seq_len, hidden), "
        f"got shape {tuple(output.shape)}; pass module= the layer that returns token embeddings."
    )


class NoiseHook:
    """`register_forward_hook` callable: returns `output + noise` in training mode, else leaves output alone."""

    def __init__(self, state: NoiseState, module_name: str) -> None:
        self.state = state
        self.module_name = module_name

    def __deepcopy__(self, memo: dict[int, Any]) -> NoiseHook:
        # PEFT deep-copies a hooked embedding into `modules_to_save`; the copy must stay part of this
        # application (same config, same layout stack, removed by the same handle).
        return NoiseHook(self.state, self.module_name)

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> torch.Tensor | None:
        state = self.state
        counts = state.counts
        if not module.training:
            counts.eval_mode += 1
            return None
        if not state.enabled:
            counts.suspended += 1
            return None
        if state.skip_no_grad and not torch.is_grad_enabled():
            counts.no_grad += 1
            return None
        if state.alpha == 0.0:
            counts.scheduled_off += 1
            return None
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            raise NEFTuneError(
                f"NEFTune hooked '{self.module_name}', whose output is "
                f"{type(output).__name__ if not isinstance(output, torch.Tensor) else output.dtype}, not a floating "
                "point tensor of embeddings; pass module= the layer that returns the token embeddings."
            )
        batched = _as_batch(output, self.module_name)
        if batched is None:
            return None
        counts.noised += 1
        if state.config.scaling == "padded":
            return self._padded(output, batched)
        return self._per_sequence(output, batched)

    def _padded(self, output: torch.Tensor, batched: torch.Tensor) -> torch.Tensor:
        state = self.state
        magnitude = scalar_magnitude(state.alpha, batched.size(1) * batched.size(2))
        generator = state.generator_for(output.device)
        if state.config.noise == "uniform":
            # Same draw, same magnitude arithmetic and same add as transformers' `neftune_post_forward_hook`.
            noise = torch.empty_like(output).uniform_(-magnitude, magnitude, generator=generator)
        else:
            noise = draw_unit_noise(output, state.config.noise, generator).mul_(magnitude)
        if self.state.stats is not None:
            self.state.stats.add(noise, batched, None)
        return noise.add_(output)

    def _per_sequence(self, output: torch.Tensor, batched: torch.Tensor) -> torch.Tensor:
        state = self.state
        alpha = state.alpha
        batch, seq_len, hidden = batched.shape
        layout = self.state.stack.innermost()
        magnitudes = token_magnitudes(layout, alpha, batch, seq_len, hidden, output.device)
        if magnitudes is None and not layout.is_empty:
            self._warn_unmatched(layout, batched)
        # The noise buffer becomes the result: one allocation, the size of the output.
        noise = draw_unit_noise(output, state.config.noise, state.generator_for(output.device))
        if magnitudes is None:
            noise.mul_(scalar_magnitude(alpha, seq_len * hidden))
        else:
            noise.view(batch, seq_len, hidden).mul_(magnitudes.unsqueeze(-1).to(noise.dtype))
        if self.state.stats is not None:
            real = None if magnitudes is None else (magnitudes > 0).to(torch.float32)
            self.state.stats.add(noise, batched, real)
        return noise.add_(output)

    def _warn_unmatched(self, layout: Any, batched: torch.Tensor) -> None:
        if self.state.warned_unmatched_layout:
            return
        self.state.warned_unmatched_layout = True
        shapes = {name: tuple(value.shape) for name, value in vars(layout).items() if isinstance(value, torch.Tensor)}
        warnings.warn(
            f"NEFTune on '{self.module_name}': the model was given {shapes}, which do not match the embedding "
            f"output {tuple(batched.shape)}; every row is treated as one full-length sequence (L = "
            f"{batched.shape[1]}). Pass a 2-D attention_mask or position_ids of shape (batch, seq_len).",
            stacklevel=2,
        )
