"""What the noise did: running sums kept on the device by the hook, read (one host sync) when they are logged."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NoiseStats:
    """Noise statistics over the noised forwards since the last read.

    Attributes:
        alpha: the configured alpha.
        noise_rms: root mean square of the added noise over real (non-pad) token elements.
        embed_rms: root mean square of the clean embeddings over the same elements.
        noise_to_signal: `noise_rms / embed_rms`.
        noised_calls: forwards that added noise.
        calls: forwards of the hooked module(s), noised or not.
    """

    alpha: float
    noise_rms: float
    embed_rms: float
    noise_to_signal: float
    noised_calls: int
    calls: int

    def as_log(self, prefix: str = "neftune/") -> dict[str, float]:
        """The Trainer log entries: `neftune/alpha`, `neftune/noise_rms`, ... (`calls` is not logged)."""
        return {
            f"{prefix}alpha": self.alpha,
            f"{prefix}noise_rms": self.noise_rms,
            f"{prefix}embed_rms": self.embed_rms,
            f"{prefix}noise_to_signal": self.noise_to_signal,
            f"{prefix}noised_calls": float(self.noised_calls),
        }


class StatsAccumulator:
    """Device-side sums: [noise^2, embedding^2, real elements]. Reset on read."""

    def __init__(self) -> None:
        self._sums: torch.Tensor | None = None

    def add(self, noise: torch.Tensor, clean: torch.Tensor, token_weights: torch.Tensor | None) -> None:
        """Accumulate one call; `token_weights` (batch, seq_len) is 1 on real tokens, None when all are real."""
        self._accumulate(torch.linalg.vector_norm(noise, dtype=torch.float32).square(), clean, token_weights)

    def add_unit(
        self, unit: torch.Tensor, scale: torch.Tensor, clean: torch.Tensor, token_weights: torch.Tensor | None
    ) -> None:
        """Like `add`, for noise `unit * scale` with `scale` 0-D or (batch, seq_len, 1): no scaled copy is made."""
        token_sq = torch.linalg.vector_norm(unit, dim=-1, dtype=torch.float32).square()
        token_scale_sq = scale.squeeze(-1).square() if scale.dim() else scale.square()
        self._accumulate((token_sq * token_scale_sq).sum(), clean, token_weights)

    def add_expected(
        self, scale: torch.Tensor, unit_variance: float, clean: torch.Tensor, token_weights: torch.Tensor | None
    ) -> None:
        """Like `add_unit` for noise that was never materialised (the fused kernel): its expected square,
        `scale^2 * unit_variance` per element, with `scale` 0-D or (batch, seq_len). Exact for symmetric noise;
        for the others the measured sum differs by about `1/sqrt(elements)` relative."""
        tokens = clean.numel() // clean.shape[-1] if scale.dim() == 0 else 1
        noise_sq = scale.square().sum() * (unit_variance * clean.shape[-1] * tokens)
        self._accumulate(noise_sq, clean, token_weights)

    def _accumulate(self, noise_sq: torch.Tensor, clean: torch.Tensor, token_weights: torch.Tensor | None) -> None:
        hidden = clean.shape[-1]
        token_sq = torch.linalg.vector_norm(clean.detach(), dim=-1, dtype=torch.float32).square()
        if token_weights is None:
            embed_sq = token_sq.sum()
            elements = token_sq.new_full((), float(token_sq.numel() * hidden))  # a fill, not a host copy
        else:
            weights = token_weights.reshape(token_sq.shape)
            embed_sq = (token_sq * weights).sum()
            elements = weights.sum() * hidden
        update = torch.stack([noise_sq, embed_sq, elements])
        self._sums = update if self._sums is None else self._sums + update

    def read(self, alpha: float, noised_calls: int, calls: int) -> NoiseStats:
        """Host-read the sums (the only sync) and reset them."""
        if self._sums is None:
            noise_sq, embed_sq, elements = 0.0, 0.0, 0.0
        else:
            noise_sq, embed_sq, elements = (float(value) for value in self._sums.tolist())
        self._sums = None
        noise_rms = math.sqrt(noise_sq / elements) if elements else 0.0
        embed_rms = math.sqrt(embed_sq / elements) if elements else 0.0
        ratio = noise_rms / embed_rms if embed_rms else 0.0
        return NoiseStats(alpha, noise_rms, embed_rms, ratio, noised_calls, calls)
