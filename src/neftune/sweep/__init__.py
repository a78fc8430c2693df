"""`neftune sweep`: train one model per (noise, alpha, seed) and measure the paper's judge-free signatures."""

from __future__ import annotations

from .runner import SweepConfig, run_sweep

__all__ = ["SweepConfig", "run_sweep"]
