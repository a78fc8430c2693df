"""Noise distributions and alpha schedules: exact values, moments, and the core's padding/length rules."""

from __future__ import annotations

import itertools
import math
from typing import get_args

import pytest
import torch
from helpers import EmbeddingOnlyModel, padding_mask

from neftune import NEFTuneConfig, NEFTuneError, apply_neftune
from neftune.noise import NOISE_KINDS, NOISES, NoiseKind, draw_unit_noise
from neftune.schedule import DECAYS, SCHEDULES, ScheduleKind, alpha_factor

ALPHA = 5.0


def zero_embedding_noise(
    config: NEFTuneConfig, batch: int, seq_len: int, hidden: int, **inputs: torch.Tensor
) -> torch.Tensor:
    """With an all-zero embedding table the module's output is exactly the noise."""
    model = EmbeddingOnlyModel(hidden=hidden)
    torch.nn.init.zeros_(model.embed_tokens.weight)
    apply_neftune(model, config)
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        return model(torch.zeros(batch, seq_len, dtype=torch.long), **inputs).double()


def moments(values: torch.Tensor) -> tuple[float, float, float]:
    mean = values.mean().item()
    var = values.var().item()
    kurtosis = (((values - mean) ** 4).mean() / var**2).item()
    return mean, var, kurtosis


def test_symmetric_noise_is_exactly_plus_or_minus_the_magnitude_with_balanced_signs() -> None:
    mask = padding_mask([512, 100], 512)
    noise = zero_embedding_noise(NEFTuneConfig(ALPHA, noise="symmetric"), 2, 512, 256, attention_mask=mask)
    for row, length in enumerate([512, 100]):
        magnitude = torch.tensor(ALPHA) / torch.sqrt(torch.tensor(float(length * 256)))  # float32, as the hook
        real = noise[row, :length]
        assert torch.equal(real.abs(), torch.full_like(real, magnitude.item()))
        assert (noise[row, length:] == 0).all()
    signs = noise[0] > 0  # 131,072 signs: std of the fraction is 0.0014
    assert abs(signs.double().mean().item() - 0.5) < 0.01


def test_gaussian_noise_has_the_uniform_variance_and_normal_kurtosis() -> None:
    noise = zero_embedding_noise(NEFTuneConfig(ALPHA, noise="gaussian"), 4, 512, 256)
    magnitude = ALPHA / math.sqrt(512 * 256)
    mean, var, kurtosis = moments(noise.flatten() / magnitude)
    assert abs(mean) < 5e-3
    assert var == pytest.approx(1 / 3, abs=5e-3)
    assert kurtosis == pytest.approx(3.0, abs=0.05)  # uniform: 1.8, symmetric: 1.0


def test_uniform_kurtosis_distinguishes_it() -> None:
    noise = zero_embedding_noise(NEFTuneConfig(ALPHA), 4, 512, 256)
    _, var, kurtosis = moments(noise.flatten() / (ALPHA / math.sqrt(512 * 256)))
    assert var == pytest.approx(1 / 3, abs=5e-3) and kurtosis == pytest.approx(1.8, abs=0.02)


def test_the_literal_types_name_exactly_the_tables_rows() -> None:
    assert get_args(NoiseKind) == tuple(NOISES) == NOISE_KINDS
    assert get_args(ScheduleKind) == tuple(DECAYS) == SCHEDULES


# Each kind's unit variance and bound, written out independently of the table (a new kind adds its row here).
KNOWN_NOISE = {"uniform": (1.0 / 3.0, 1.0), "gaussian": (1.0 / 3.0, None), "symmetric": (1.0, 1.0)}


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_each_noise_row_states_the_known_variance_and_bound(kind: str) -> None:
    assert set(KNOWN_NOISE) == set(NOISES)
    variance, bound = KNOWN_NOISE[kind]
    assert NOISES[kind].unit_variance == pytest.approx(variance, abs=1e-15) and NOISES[kind].bound == bound


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_each_noise_kind_draws_what_its_row_declares(kind: str) -> None:
    row = NOISES[kind]
    generator = torch.Generator().manual_seed(5)
    unit = draw_unit_noise(torch.zeros(512, 512), kind, generator).double().flatten()  # type: ignore[arg-type]
    n = unit.numel()
    square = unit.square()
    assert abs(unit.mean().item()) < 5 * math.sqrt(row.unit_variance / n)  # 5 standard errors of the mean
    # 5 standard errors of the mean square, from the sample's own 4th moment (0 when |u| is constant)
    assert abs(square.mean().item() - row.unit_variance) <= 5 * square.std().item() / math.sqrt(n) + 1e-12
    peak = unit.abs().max().item()
    if row.bound is None:
        assert peak > 4.0 * math.sqrt(row.unit_variance)  # unbounded: past 4 std in 262,144 draws
    else:
        assert row.bound * 0.99 < peak <= row.bound
        if row.unit_variance == row.bound**2:  # all of the mass at the bound: |u| is the bound everywhere
            assert torch.equal(unit.abs(), torch.full_like(unit, row.bound))


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_each_noise_kind_keeps_dtype_device_and_shape(kind: str) -> None:
    like = torch.zeros(2, 3, 8, dtype=torch.bfloat16)
    unit = draw_unit_noise(like, kind, None)  # type: ignore[arg-type]
    assert unit.dtype == torch.bfloat16 and unit.shape == like.shape and unit.data_ptr() != like.data_ptr()


def test_an_unknown_noise_kind_reaching_the_draw_is_refused() -> None:
    with pytest.raises(
        NEFTuneError, match=r"noise must be one of \('uniform', 'gaussian', 'symmetric'\), got 'laplace'"
    ):
        draw_unit_noise(torch.zeros(3), "laplace", None)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_every_kind_respects_padding_and_packed_lengths(kind: str) -> None:
    segments = [30, 10, 24]
    position_ids = torch.cat([torch.arange(n) for n in segments])[None]
    noise = zero_embedding_noise(NEFTuneConfig(ALPHA, noise=kind), 1, 64, 64, position_ids=position_ids)[0]
    start = 0
    for length in segments:
        segment = noise[start : start + length]
        rms = segment.pow(2).mean().sqrt().item()
        # RMS of uniform, matched-variance gaussian and symmetric/sqrt(3)... all scale with 1/sqrt(L)
        expected = ALPHA / math.sqrt(length * 64) / (math.sqrt(3) if kind != "symmetric" else 1.0)
        assert rms == pytest.approx(expected, rel=0.15)
        start += length
    mask = padding_mask([5, 64], 64)
    padded = zero_embedding_noise(NEFTuneConfig(ALPHA, noise=kind), 2, 64, 64, attention_mask=mask)
    assert (padded[0, 5:] == 0).all() and (padded[0, :5] != 0).any()


@pytest.mark.parametrize("kind", [kind for kind in NOISE_KINDS if kind != "uniform"])  # uniform: test_formula.py
def test_padded_scaling_works_with_other_kinds(kind: str) -> None:
    noise = zero_embedding_noise(NEFTuneConfig(ALPHA, scaling="padded", noise=kind), 2, 64, 64)
    if kind == "symmetric":
        assert torch.allclose(noise.abs(), torch.full_like(noise, ALPHA / math.sqrt(64 * 64)))
    assert (noise != 0).all()


# alpha at progress 0, 0.25, 0.5, 1 (the table in the README)
SCHEDULE_TABLE = {
    ("constant", 0.0): [1.0, 1.0, 1.0, 1.0],
    ("linear", 0.0): [1.0, 0.75, 0.5, 0.0],
    ("cosine", 0.0): [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.0],
    ("constant", 0.5): [0.0, 0.5, 1.0, 1.0],
    ("linear", 0.5): [0.0, 0.5, 1.0, 0.0],
    ("cosine", 0.5): [0.0, 0.5, 1.0, 0.0],
    ("linear", 0.2): [0.0, 0.9375, 0.625, 0.0],
}


@pytest.mark.parametrize(("schedule", "warmup"), list(SCHEDULE_TABLE))
def test_schedule_values(schedule: str, warmup: float) -> None:
    got = [alpha_factor(schedule, warmup, p) for p in (0.0, 0.25, 0.5, 1.0)]  # type: ignore[arg-type]
    assert got == pytest.approx(SCHEDULE_TABLE[(schedule, warmup)], abs=1e-12)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_each_schedule_starts_at_full_alpha_after_warmup_and_never_rises(schedule: str) -> None:
    decay = DECAYS[schedule]
    values = [decay(step / 100) for step in range(101)]
    assert values[0] == 1.0
    assert all(0.0 <= value <= 1.0 for value in values)
    assert all(later <= earlier for earlier, later in itertools.pairwise(values))
    ramp = [alpha_factor(schedule, 0.2, progress) for progress in (0.0, 0.1, 0.2)]  # type: ignore[arg-type]
    assert ramp == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("warmup", [0.0, 0.5])
def test_an_unknown_schedule_reaching_the_factor_is_refused(warmup: float) -> None:
    with pytest.raises(NEFTuneError, match=r"schedule must be one of \('constant', 'linear', 'cosine'\), got 'step'"):
        alpha_factor("step", warmup, 0.1)  # type: ignore[arg-type]


def test_schedule_drives_the_realised_noise_through_the_handle() -> None:
    model = EmbeddingOnlyModel(hidden=64)
    torch.nn.init.zeros_(model.embed_tokens.weight)
    handle = apply_neftune(model, NEFTuneConfig(ALPHA, schedule="linear"))
    model.train()
    ids = torch.zeros(1, 100, dtype=torch.long)
    full = ALPHA / math.sqrt(100 * 64)
    for progress, factor in [(0.0, 1.0), (0.5, 0.5), (0.9, 0.1)]:
        handle.set_progress(progress)
        assert handle.alpha == pytest.approx(ALPHA * factor)
        with torch.no_grad():
            peak = model(ids).abs().max().item()
        assert factor * full * 0.98 <= peak <= factor * full * (1 + 1e-6)
    handle.set_progress(1.0)
    with torch.no_grad():
        assert (model(ids) == 0).all()
    assert handle.counts.scheduled_off == 1
    with pytest.raises(NEFTuneError, match=r"progress must be a number in \[0, 1\], got 1.5"):
        handle.set_progress(1.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise": "laplace"}, r"noise must be one of \('uniform', 'gaussian', 'symmetric'\), got 'laplace'"),
        ({"schedule": "step"}, r"schedule must be one of \('constant', 'linear', 'cosine'\), got 'step'"),
        ({"schedule_warmup": 1.0}, r"schedule_warmup must be a fraction of training in \[0, 1\), got 1.0"),
        ({"seed": -3}, r"seed must be a non-negative int or None, got -3"),
        ({"seed": 1.5}, r"seed must be a non-negative int or None, got 1.5"),
    ],
)
def test_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(NEFTuneError, match=message):
        NEFTuneConfig(**kwargs)  # type: ignore[arg-type]
