"""The noise itself: bit-exact against the paper's training code, bounds, padding, packing, moments."""

from __future__ import annotations

import pytest
import torch
from helpers import EmbeddingOnlyModel, left_padded_position_ids, padding_mask
from reference import packed_reference, paper_training_code, row_bounds

from neftune import NEFTuneConfig, apply_neftune

ALPHA = 5.0


def clean_and_noisy(model: EmbeddingOnlyModel, seed: int, **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        clean = model(**inputs)
    model.train()
    torch.manual_seed(seed)
    with torch.no_grad():
        noisy = model(**inputs)
    return clean, noisy


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("lengths", [[12, 7, 3], [5, 5], [1, 12, 9, 4]])
def test_bit_exact_with_paper_training_code(side: str, lengths: list[int]) -> None:
    torch.manual_seed(0)
    model = EmbeddingOnlyModel(hidden=24)
    input_ids = torch.randint(0, 64, (len(lengths), 12))
    mask = padding_mask(lengths, 12, side)
    apply_neftune(model, ALPHA)
    clean, noisy = clean_and_noisy(model, seed=123, input_ids=input_ids, attention_mask=mask)
    torch.manual_seed(123)
    expected = paper_training_code(clean, mask, ALPHA)
    assert torch.equal(noisy, expected)


def test_left_padding_with_generate_style_position_ids_is_bit_exact() -> None:
    torch.manual_seed(0)
    model = EmbeddingOnlyModel(hidden=24)
    mask = padding_mask([10, 4, 7], 10, "left")
    input_ids = torch.randint(0, 64, (3, 10))
    apply_neftune(model, ALPHA)
    clean, noisy = clean_and_noisy(
        model, seed=5, input_ids=input_ids, attention_mask=mask, position_ids=left_padded_position_ids(mask)
    )
    torch.manual_seed(5)
    assert torch.equal(noisy, paper_training_code(clean, mask, ALPHA))


def test_per_row_bounds_and_untouched_padding() -> None:
    torch.manual_seed(0)
    hidden, seq_len = 64, 40
    lengths = [40, 25, 9, 2]
    model = EmbeddingOnlyModel(hidden=hidden)
    mask = padding_mask(lengths, seq_len)
    apply_neftune(model, ALPHA)
    clean, noisy = clean_and_noisy(model, seed=0, input_ids=torch.randint(0, 64, (4, seq_len)), attention_mask=mask)
    noise = (noisy - clean).double()
    bounds = row_bounds(mask, hidden, ALPHA)
    for row in range(len(lengths)):
        real = noise[row][mask[row] == 1]
        assert real.abs().max() <= bounds[row] * (1 + 1e-5)
        # 64 * L draws: the largest |U(-1,1)| is essentially 1 (P(max < 0.9) < 1e-5 even for L = 2)
        assert real.abs().max() >= 0.9 * bounds[row]
        assert torch.equal(noisy[row][mask[row] == 0], clean[row][mask[row] == 0])


def test_packed_position_ids_give_each_segment_its_own_length() -> None:
    torch.manual_seed(0)
    segments = [[5, 9, 2], [16]]
    model = EmbeddingOnlyModel(hidden=32)
    position_ids = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in segments])
    input_ids = torch.randint(0, 64, (2, 16))
    apply_neftune(model, ALPHA)
    clean, noisy = clean_and_noisy(model, seed=9, input_ids=input_ids, position_ids=position_ids)
    torch.manual_seed(9)
    assert torch.equal(noisy, packed_reference(clean, segments, ALPHA))


def test_padding_free_batch_from_cu_seq_lens() -> None:
    """TRL's padding-free collator: one row, cu_seq_lens_q marks the boundaries, no attention_mask."""
    torch.manual_seed(0)
    segments = [[7, 3, 12]]
    model = EmbeddingOnlyModel(hidden=32)
    apply_neftune(model, ALPHA)
    cu = torch.tensor([0, 7, 10, 22], dtype=torch.int32)
    # position ids deliberately flat: cu_seq_lens must take precedence over them
    clean, noisy = clean_and_noisy(
        model, seed=2, input_ids=torch.randint(0, 64, (1, 22)), cu_seq_lens_q=cu, position_ids=torch.arange(22)[None]
    )
    torch.manual_seed(2)
    assert torch.equal(noisy, packed_reference(clean, segments, ALPHA))


def test_cu_seqlens_tokens_past_the_last_boundary_get_no_noise() -> None:
    torch.manual_seed(0)
    model = EmbeddingOnlyModel(hidden=16)
    apply_neftune(model, ALPHA)
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)  # 10 real tokens, 2 pad to a multiple of 4
    clean, noisy = clean_and_noisy(model, seed=1, input_ids=torch.randint(0, 64, (1, 12)), cu_seqlens=cu)
    assert torch.equal(noisy[0, 10:], clean[0, 10:])
    noise = (noisy - clean)[0].double()
    assert noise[:4].abs().max() <= ALPHA / (4 * 16) ** 0.5 * (1 + 1e-5)
    assert noise[4:10].abs().max() <= ALPHA / (6 * 16) ** 0.5 * (1 + 1e-5)


def test_noise_moments_on_a_large_tensor() -> None:
    torch.manual_seed(0)
    hidden, seq_len, batch = 256, 512, 4
    model = EmbeddingOnlyModel(hidden=hidden)
    nn_init = torch.nn.init
    nn_init.zeros_(model.embed_tokens.weight)  # output == noise exactly
    apply_neftune(model, ALPHA)
    model.train()
    with torch.no_grad():
        noise = model(torch.zeros(batch, seq_len, dtype=torch.long)).double()
    magnitude = ALPHA / (seq_len * hidden) ** 0.5
    scaled = noise / magnitude
    # U(-1,1): mean 0, variance 1/3; over 524,288 draws the standard error of the mean is 8e-4.
    assert abs(scaled.mean().item()) < 5e-3
    assert abs(scaled.var().item() - 1 / 3) < 5e-3
    assert scaled.abs().max().item() <= 1.0 + 1e-6


def test_row_without_real_tokens_gets_zero_noise_not_nan() -> None:
    model = EmbeddingOnlyModel(hidden=8)
    apply_neftune(model, ALPHA)
    mask = padding_mask([6, 0, 3], 6)
    clean, noisy = clean_and_noisy(model, seed=0, input_ids=torch.randint(0, 64, (3, 6)), attention_mask=mask)
    assert not torch.isnan(noisy).any()
    assert torch.equal(noisy[1], clean[1])


def test_unbatched_two_dimensional_output() -> None:
    """(seq_len, hidden) outputs, as VLM code that flattens text embeddings produces."""
    model = EmbeddingOnlyModel(hidden=16)
    apply_neftune(model, ALPHA)
    clean, noisy = clean_and_noisy(model, seed=0, input_ids=torch.randint(0, 64, (10,)))
    noise = (noisy - clean).double()
    bound = ALPHA / (10 * 16) ** 0.5
    assert noisy.shape == (10, 16)
    assert bound * 0.9 <= noise.abs().max() <= bound * (1 + 1e-5)
    # with a (1, L) mask from the enclosing forward, the mask's length is used
    mask = padding_mask([4], 10)
    clean, noisy = clean_and_noisy(model, seed=0, input_ids=torch.randint(0, 64, (10,)), attention_mask=mask)
    assert torch.equal(noisy[4:], clean[4:])
    assert (noisy - clean)[:4].abs().max() <= ALPHA / (4 * 16) ** 0.5 * (1 + 1e-5)


def test_zero_dimensional_probe_passes_untouched() -> None:
    """Qwen2-VL calls the embedding on a 0-D token id and compares values: it must be left alone."""
    model = EmbeddingOnlyModel(hidden=16)
    apply_neftune(model, ALPHA)
    model.train()
    probe = torch.tensor(3)
    assert torch.equal(model.embed_tokens(probe), model.embed_tokens.weight[3])


def test_no_stale_layout_after_the_call() -> None:
    """A mask seen by one forward must not leak into a later direct call of the embedding."""
    torch.manual_seed(0)
    hidden = 16
    model = EmbeddingOnlyModel(hidden=hidden)
    torch.nn.init.zeros_(model.embed_tokens.weight)
    apply_neftune(model, ALPHA)
    model.train()
    with torch.no_grad():
        model(torch.zeros(1, 8, dtype=torch.long), attention_mask=padding_mask([2], 8))
        direct = model.embed_tokens(torch.zeros(1, 8, dtype=torch.long))
    # full length 8: pads are noised and the scale is that of L = 8, not the mask's L = 2
    assert (direct[0, 2:] != 0).all()
    assert direct.abs().max() <= ALPHA / (8 * hidden) ** 0.5 * (1 + 1e-5)


def test_layout_is_popped_when_forward_raises() -> None:
    class Failing(EmbeddingOnlyModel):
        def forward(  # type: ignore[override]
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw: object
        ) -> torch.Tensor:
            self.embed_tokens(input_ids)
            raise RuntimeError("boom")

    model = Failing(hidden=16)
    torch.nn.init.zeros_(model.embed_tokens.weight)
    apply_neftune(model, ALPHA)
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        model(torch.zeros(1, 8, dtype=torch.long), attention_mask=padding_mask([2], 8))
    with torch.no_grad():
        direct = model.embed_tokens(torch.zeros(1, 8, dtype=torch.long))
    assert (direct[0, 2:] != 0).all()


def test_positional_attention_mask_is_seen() -> None:
    model = EmbeddingOnlyModel(hidden=16)
    apply_neftune(model, ALPHA)
    mask = padding_mask([3, 8], 8)
    ids = torch.randint(0, 64, (2, 8))
    model.eval()
    clean = model(ids, mask)
    model.train()
    torch.manual_seed(4)
    noisy = model(ids, mask)
    torch.manual_seed(4)
    assert torch.equal(noisy, paper_training_code(clean, mask, ALPHA))


def test_padded_scaling_noises_padding_with_the_batch_length() -> None:
    torch.manual_seed(0)
    hidden = 16
    model = EmbeddingOnlyModel(hidden=hidden)
    torch.nn.init.zeros_(model.embed_tokens.weight)
    apply_neftune(model, NEFTuneConfig(alpha=ALPHA, scaling="padded"))
    model.train()
    with torch.no_grad():
        noise = model(torch.zeros(2, 20, dtype=torch.long), attention_mask=padding_mask([20, 3], 20))
    bound = ALPHA / (20 * hidden) ** 0.5
    assert (noise[1, 3:] != 0).all()
    assert 0.9 * bound <= noise[1].abs().max() <= bound * (1 + 1e-6)
