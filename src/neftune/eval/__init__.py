"""The paper's judge-free measurements (section 5): clean training loss, held-out loss, memorisation, length and
diversity of greedy outputs. Needs the `eval` extra (`pip install "neftune[eval]"`).
"""

from __future__ import annotations

from .generation import generate_greedy
from .losses import mean_completion_loss
from .metrics import bleu, degenerate_share, diversity_metrics, output_lengths, repetition_rates, rouge_l

__all__ = [
    "bleu",
    "degenerate_share",
    "diversity_metrics",
    "generate_greedy",
    "mean_completion_loss",
    "output_lengths",
    "repetition_rates",
    "rouge_l",
]
