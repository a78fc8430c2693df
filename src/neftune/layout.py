"""Where the sequences are in a batch: the inputs that tell real tokens and sequence boundaries apart.

A `BatchLayout` is what the forward that calls the embedding was given. From it, `token_magnitudes`
computes the paper's per-token noise magnitude `alpha / sqrt(L * d)`, with `L` the length of the sequence
the token belongs to and zero at padding. Everything stays on the device: no `.item()`, no host sync.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .model_families import packing_position_ids


@dataclass(frozen=True)
class BatchLayout:
    """The length-bearing inputs of one forward call; any of them may be missing."""

    cu_seqlens: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None

    @property
    def is_empty(self) -> bool:
        return self.cu_seqlens is None and self.position_ids is None and self.attention_mask is None


@functools.lru_cache(maxsize=256)
def scalar_magnitude(alpha: float, numel: int) -> float:
    """`alpha / sqrt(numel)` rounded exactly as the reference code does it on a float32 CPU tensor.

    Written as `alpha / torch.sqrt(tensor)` (which torch evaluates as `sqrt(tensor).reciprocal() * alpha`)
    so the value is bit-identical to transformers' hook and the paper's code. CPU only: no device sync.
    """
    return float(alpha / torch.sqrt(torch.tensor(numel, dtype=torch.float32)))


def _real_token_mask(mask: torch.Tensor | None, batch: int, seq_len: int) -> torch.Tensor | None:
    """A float32 (batch, seq_len) 0/1 mask, or None if `mask` is absent or does not describe these tokens."""
    if mask is None or not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return None
    if tuple(mask.shape) != (batch, seq_len):
        return None
    return (mask != 0).to(torch.float32)


def _lengths_from_cu_seqlens(
    cu_seqlens: torch.Tensor, batch: int, seq_len: int, real: torch.Tensor | None, pads: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token length of its segment and the real-token mask, from cumulative boundaries over the flattened batch.

    Tokens outside every segment are not real; nor is a segment made only of pad-id tokens (see
    `token_magnitudes`). The length counts only real tokens, like the position-id route.
    """
    bounds = cu_seqlens.to(torch.int64).flatten()
    token_index = torch.arange(batch * seq_len, device=bounds.device)
    segment = torch.searchsorted(bounds[1:].contiguous(), token_index, right=True)
    segment_lengths = bounds.diff().to(torch.float32)
    last = max(segment_lengths.numel() - 1, 0)
    segment = segment.clamp(max=last)
    inside = (token_index < bounds[-1]).to(torch.float32).view(batch, seq_len)
    real = inside if real is None else real * inside
    if pads is not None:
        pad_counts = torch.zeros_like(segment_lengths).scatter_add_(
            0, segment, (pads > 0).flatten() * inside.flatten()
        )
        only_pads = pad_counts == segment_lengths
        real = real * ~only_pads.gather(0, segment).view(batch, seq_len)
    counts = torch.zeros(max(segment_lengths.numel(), 1), dtype=torch.float32, device=real.device)
    counts.scatter_add_(0, segment, real.flatten())
    return counts.gather(0, segment).view(batch, seq_len), real


def _lengths_from_position_ids(
    position_ids: torch.Tensor, real: torch.Tensor, pads: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token length of the segment it belongs to, and the real-token mask; a segment starts at position id 0.

    Only real tokens count, so a row of arange positions with padding gets the paper's `mask.sum()`.
    """
    segment = (position_ids == 0).to(torch.int64).cumsum(-1)
    if pads is not None:
        members = torch.zeros(real.shape[0], real.shape[1] + 1, dtype=torch.float32, device=real.device)
        members.scatter_add_(1, segment, torch.ones_like(real))
        pad_members = torch.zeros_like(members).scatter_add_(1, segment, (pads > 0).to(torch.float32))
        real = real * ~(pad_members == members).gather(1, segment)
    counts = torch.zeros(real.shape[0], real.shape[1] + 1, dtype=torch.float32, device=real.device)
    counts.scatter_add_(1, segment, real)
    return counts.gather(1, segment), real


def _position_ids_for(position_ids: torch.Tensor | None, batch: int, seq_len: int) -> torch.Tensor | None:
    position_ids = packing_position_ids(position_ids)
    if position_ids is None or position_ids.shape[1] != seq_len or position_ids.shape[0] not in (1, batch):
        return None
    return position_ids.expand(batch, seq_len)


def token_magnitudes(
    layout: BatchLayout,
    alpha: float,
    batch: int,
    seq_len: int,
    hidden: int,
    device: torch.device,
    eligible: torch.Tensor | None = None,
    pads: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """The float32 (batch, seq_len) noise magnitude of every token, or None when nothing restricts the batch.

    None means every row is one full-length sequence; the caller then uses the scalar magnitude.
    `eligible` (batch, seq_len) is 0 at positions that are not text (a VLM's image placeholders): like padding,
    they get no noise and do not count in L. Padding and tokens outside every packed segment get exactly 0;
    a row without real tokens gets 0, never NaN.

    `pads` (batch, seq_len) is 1 where the token id is the pad token's. Packing and padding-free collators that
    pad with restarting positions (TRL's `pad_to_multiple_of`, LLaMA-Factory's packing: position id 0, mask 1)
    make every pad a segment of its own, and axolotl's multipack collator gives its pad tail restarting positions
    0, 1, 2, ... without a mask: a segment made only of pad-id tokens is padding, not a sequence, so it gets no
    noise and counts nowhere. A pad id inside a segment with other tokens (pad = eos) stays real.
    """
    real = _real_token_mask(layout.attention_mask, batch, seq_len)
    if eligible is not None:
        real = eligible if real is None else real * eligible
    lengths: torch.Tensor | None = None
    if layout.cu_seqlens is not None:
        lengths, real = _lengths_from_cu_seqlens(layout.cu_seqlens.to(device), batch, seq_len, real, pads)
    else:
        position_ids = _position_ids_for(layout.position_ids, batch, seq_len)
        if position_ids is not None:
            if real is None:
                real = torch.ones(batch, seq_len, dtype=torch.float32, device=device)
            lengths, real = _lengths_from_position_ids(position_ids.to(device), real, pads)
        elif real is not None:
            lengths = real.sum(-1, keepdim=True)
    if lengths is None or real is None:
        return None
    # clamp: a row of only padding has L = 0; its magnitude is then finite and masked to 0 below.
    magnitude = alpha / torch.sqrt(lengths.clamp_min(1.0) * hidden)
    return magnitude * real
