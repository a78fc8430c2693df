"""Reference implementations the library is checked against, written from the paper's formulas.

`paper_training_code` follows the arithmetic of the paper's training script (arXiv 2310.05914,
`experiment_code/train.py`): L is each row's `attention_mask` sum, pads get no noise. `packed_reference`
extends it to packed rows, each segment with its own L, drawing the noise in one call like the library.
"""

from __future__ import annotations

import torch


def paper_training_code(embeds: torch.Tensor, attention_mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """embeds + Uniform(-1, 1) * mask * alpha / sqrt(L_row * d), with L_row = attention_mask.sum(1)."""
    input_mask = attention_mask.to(embeds)
    input_lengths = torch.sum(input_mask, 1)
    delta = torch.zeros_like(embeds).uniform_(-1, 1) * input_mask.unsqueeze(2)
    dims = input_lengths * embeds.size(-1)
    magnitude = alpha / torch.sqrt(dims)
    return (delta * magnitude.view(-1, 1, 1)).detach() + embeds


def packed_reference(embeds: torch.Tensor, segment_lengths: list[list[int]], alpha: float) -> torch.Tensor:
    """embeds + Uniform(-1, 1) * alpha / sqrt(L_segment * d) for rows of back-to-back segments (no padding)."""
    uniform = torch.zeros_like(embeds).uniform_(-1, 1)
    magnitude = torch.zeros(embeds.shape[:2], dtype=torch.float32)
    for row, lengths in enumerate(segment_lengths):
        start = 0
        for length in lengths:
            dims = torch.tensor(float(length * embeds.size(-1)))
            magnitude[row, start : start + length] = alpha / torch.sqrt(dims)
            start += length
    return uniform * magnitude.unsqueeze(-1) + embeds


def row_bounds(attention_mask: torch.Tensor, hidden: int, alpha: float) -> torch.Tensor:
    """alpha / sqrt(L_i * d) for every row i (float64, for bound checks)."""
    lengths = attention_mask.sum(1).to(torch.float64)
    return alpha / torch.sqrt(lengths * hidden)
