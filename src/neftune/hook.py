"""The forward hook that adds NEFTune noise to an embedding module's output."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from .call_context import CallStack
from .config import NEFTuneConfig
from .errors import NEFTuneError
from .layout import scalar_magnitude, token_magnitudes


class NoiseState:
    """What one `apply_neftune` call shares between its hooks: config, call stack, on/off switch."""

    def __init__(self, config: NEFTuneConfig) -> None:
        self.config = config
        self.stack = CallStack()
        self.suspended = 0  # > 0 inside `disable_noise`; a counter so the context manager nests
        self.warned_unmatched_layout = False

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
        if not module.training or not state.enabled:
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
        if state.config.scaling == "padded":
            return self._padded(output, batched)
        return self._per_sequence(output, batched)

    def _padded(self, output: torch.Tensor, batched: torch.Tensor) -> torch.Tensor:
        # Same draw, same magnitude arithmetic and same add as transformers' `neftune_post_forward_hook`.
        magnitude = scalar_magnitude(self.state.config.alpha, batched.size(1) * batched.size(2))
        return torch.empty_like(output).uniform_(-magnitude, magnitude).add_(output)

    def _per_sequence(self, output: torch.Tensor, batched: torch.Tensor) -> torch.Tensor:
        alpha = self.state.config.alpha
        batch, seq_len, hidden = batched.shape
        layout = self.state.stack.innermost()
        magnitudes = token_magnitudes(layout, alpha, batch, seq_len, hidden, output.device)
        if magnitudes is None and not layout.is_empty:
            self._warn_unmatched(layout, batched)
        # The noise buffer becomes the result: one allocation, the size of the output.
        noise = torch.empty_like(output).uniform_(-1.0, 1.0)
        if magnitudes is None:
            noise.mul_(scalar_magnitude(alpha, seq_len * hidden))
        else:
            noise.view(batch, seq_len, hidden).mul_(magnitudes.unsqueeze(-1).to(noise.dtype))
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
