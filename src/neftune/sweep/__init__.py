"""`neftune sweep`: train one model per (noise, alpha, scaling, seed), measure the paper's judge-free signatures
and test them paired by seed; `neftune report` rebuilds the report of a sweep directory."""

from __future__ import annotations

from .runner import SweepConfig, rebuild_report, run_sweep

__all__ = ["SweepConfig", "rebuild_report", "run_sweep"]
