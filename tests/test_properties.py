"""Hypothesis properties over batch size, lengths, padding side and dtype."""

from __future__ import annotations

import torch
from helpers import EmbeddingOnlyModel, padding_mask
from hypothesis import given, settings
from hypothesis import strategies as st

from neftune import apply_neftune

# Rounding of the magnitude and of the product in each dtype: |noise| <= bound * (1 + slack).
SLACK = {torch.float32: 1e-6, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=24), min_size=1, max_size=5),
    extra=st.integers(min_value=0, max_value=6),
    side=st.sampled_from(["left", "right"]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    alpha=st.floats(min_value=0.1, max_value=20.0),
    hidden=st.sampled_from([8, 24, 64]),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_noise_is_bounded_per_row_and_absent_on_padding(
    lengths: list[int], extra: int, side: str, dtype: torch.dtype, alpha: float, hidden: int, seed: int
) -> None:
    seq_len = max(max(lengths), 1) + extra
    model = EmbeddingOnlyModel(hidden=hidden, dtype=dtype)
    torch.nn.init.zeros_(model.embed_tokens.weight)  # output == noise, exactly, in every dtype
    apply_neftune(model, alpha)
    model.train()
    mask = padding_mask(lengths, seq_len, side)
    torch.manual_seed(seed)
    with torch.no_grad():
        noise = model(torch.zeros(len(lengths), seq_len, dtype=torch.long), attention_mask=mask)
    assert noise.dtype == dtype and noise.shape == (len(lengths), seq_len, hidden)
    assert torch.isfinite(noise).all()
    for row, length in enumerate(lengths):
        assert (noise[row][mask[row] == 0] == 0).all()
        if length:
            bound = alpha / (length * hidden) ** 0.5
            assert noise[row].double().abs().max() <= bound * (1 + SLACK[dtype])


@settings(max_examples=40, deadline=None)
@given(
    segments=st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=6),
    hidden=st.sampled_from([8, 32]),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_packed_segments_are_each_bounded_by_their_own_length(segments: list[int], hidden: int, seed: int) -> None:
    model = EmbeddingOnlyModel(hidden=hidden)
    torch.nn.init.zeros_(model.embed_tokens.weight)
    apply_neftune(model, 5.0)
    model.train()
    position_ids = torch.cat([torch.arange(n) for n in segments])[None]
    torch.manual_seed(seed)
    with torch.no_grad():
        noise = model(torch.zeros_like(position_ids), position_ids=position_ids)[0].double()
    start = 0
    for length in segments:
        bound = 5.0 / (length * hidden) ** 0.5
        segment = noise[start : start + length]
        assert segment.abs().max() <= bound * (1 + 1e-6)
        assert segment.abs().max() > 0
        start += length
