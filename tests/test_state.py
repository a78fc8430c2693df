"""`NoiseState`'s own methods: suspension, counts, warn-once flags and the schedule it owns."""

from __future__ import annotations

from dataclasses import fields
from typing import get_args

import pytest
import torch
from helpers import EmbeddingOnlyModel

from neftune import NEFTuneConfig, NEFTuneError, apply_neftune, disable_noise
from neftune.schedule import AlphaSchedule
from neftune.state import CallCounts, CountReason, NoiseState, WarningKey


def test_suspend_nests_and_ends_when_the_block_raises() -> None:
    state = NoiseState(NEFTuneConfig())
    with state.suspend():
        with state.suspend():
            assert not state.enabled
        assert not state.enabled
    assert state.enabled
    with pytest.raises(RuntimeError, match="boom"), state.suspend():
        raise RuntimeError("boom")
    assert state.enabled


def test_disable_noise_suspends_every_application_and_resumes_them_after_an_error() -> None:
    model = EmbeddingOnlyModel()
    first = apply_neftune(model, 5.0, module=model.embed_tokens)
    other = EmbeddingOnlyModel()
    second = apply_neftune(other, 5.0)
    model.add_module("other", other)  # a second application inside the same model
    states = [first._state, second._state]
    with pytest.raises(RuntimeError, match="boom"), disable_noise(model):
        assert [state.enabled for state in states] == [False, False]
        raise RuntimeError("boom")
    assert [state.enabled for state in states] == [True, True]


def test_count_reasons_are_the_fields_of_call_counts() -> None:
    assert get_args(CountReason) == tuple(field.name for field in fields(CallCounts))


def test_count_adds_one_to_its_own_field_only() -> None:
    state = NoiseState(NEFTuneConfig())
    state.count("no_grad")
    state.count("no_grad")
    state.count("scheduled_off")
    assert state.counts == CallCounts(no_grad=2, scheduled_off=1)
    assert state.counts.total == 3


def test_difference_of_two_snapshots_is_taken_field_by_field() -> None:
    later = CallCounts(noised=7, eval_mode=3, suspended=2, no_grad=5, scheduled_off=1)
    earlier = CallCounts(noised=4, eval_mode=3, suspended=0, no_grad=1, scheduled_off=1)
    difference = later - earlier
    assert difference == CallCounts(noised=3, eval_mode=0, suspended=2, no_grad=4, scheduled_off=0)
    assert difference.total == later.total - earlier.total == 9
    assert CallCounts() - CallCounts() == CallCounts()
    with pytest.raises(TypeError):
        later - 1  # type: ignore[operator]


def test_difference_of_a_handles_counts_is_what_ran_between_the_reads() -> None:
    model = EmbeddingOnlyModel()
    handle = apply_neftune(model, 5.0)
    ids = torch.zeros(1, 4, dtype=torch.long)
    model.train()
    model(ids)
    before = handle.counts
    model(ids)
    with disable_noise(model):
        model(ids)
    model.eval()
    model(ids)
    assert handle.counts - before == CallCounts(noised=1, eval_mode=1, suspended=1)


@pytest.mark.parametrize("key", get_args(WarningKey))
def test_warn_once_is_true_only_the_first_time_and_per_key(key: WarningKey) -> None:
    state = NoiseState(NEFTuneConfig())
    assert state.warn_once(key)
    assert not state.warn_once(key)
    others = [other for other in get_args(WarningKey) if other != key]
    assert all(state.warn_once(other) for other in others)
    assert NoiseState(NEFTuneConfig()).warn_once(key)  # another application warns again


def test_state_alpha_follows_its_schedule() -> None:
    state = NoiseState(NEFTuneConfig(4.0, schedule="linear", schedule_warmup=0.5))
    assert state.schedule.kind == "linear" and state.schedule.warmup == 0.5
    assert state.alpha == 0.0 and state.schedule.is_zero
    state.set_progress(0.25)
    assert state.alpha == 2.0 and not state.schedule.is_zero
    state.set_progress(0.75)
    assert state.alpha == 2.0 and state.schedule.factor == 0.5


def test_factor_tensors_are_made_once_per_device_and_refilled_in_place() -> None:
    schedule = AlphaSchedule("cosine", 0.0)
    tensor = schedule.factor_tensor(torch.device("cpu"))
    assert tensor.dtype == torch.float32 and tensor.dim() == 0 and tensor.item() == 1.0
    schedule.set_progress(0.5)
    assert schedule.factor_tensor(torch.device("cpu")) is tensor
    assert tensor.item() == pytest.approx(0.5) and schedule.factor == pytest.approx(0.5)
    schedule.set_progress(1.0)
    assert tensor.item() == 0.0 and schedule.is_zero


@pytest.mark.parametrize(
    ("kind", "warmup", "varies"), [("constant", 0.0, False), ("constant", 0.1, True), ("linear", 0.0, True)]
)
def test_only_a_constant_schedule_without_warmup_leaves_the_noise_unscaled(
    kind: str, warmup: float, varies: bool
) -> None:
    assert AlphaSchedule(kind, warmup).varies is varies  # type: ignore[arg-type]


def test_an_unknown_schedule_is_refused_when_the_schedule_is_made() -> None:
    with pytest.raises(NEFTuneError, match=r"schedule must be one of \('constant', 'linear', 'cosine'\), got 'step'"):
        AlphaSchedule("step", 0.0)  # type: ignore[arg-type]
