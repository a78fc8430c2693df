"""Counts and flags of `SFTConfig` and `NEFTuneCallback` are refused when constructed, naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")
from neftune import NEFTuneCallback, NEFTuneError, SFTConfig


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"neftune_clean_loss_steps": 0},
            NEFTuneError,
            r"neftune_clean_loss_steps must be >= 1 or None, got 0; e.g. 50",
        ),
        ({"neftune_clean_loss_steps": -3}, NEFTuneError, r"neftune_clean_loss_steps must be >= 1 or None, got -3"),
        ({"neftune_clean_loss_samples": 0}, NEFTuneError, r"neftune_clean_loss_samples must be >= 1, got 0; e.g. 16"),
        (
            {"neftune_clean_loss_steps": 2.5},
            TypeError,
            r"neftune_clean_loss_steps must be a whole number >= 1 or None",
        ),
        ({"neftune_log_stats": "no"}, TypeError, r"neftune_log_stats must be True or False, got 'no' of type str"),
    ],
)
def test_sft_config_refuses_bad_counts(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **kwargs)


def test_sft_config_accepts_good_counts(tmp_path: Path) -> None:
    args = SFTConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, neftune_clean_loss_steps=5, neftune_clean_loss_samples=4
    )
    assert (args.neftune_clean_loss_steps, args.neftune_clean_loss_samples) == (5, 4)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"clean_loss_steps": 1.5},
            TypeError,
            r"clean_loss_steps must be a whole number >= 1 or None, got 1.5 of type float",
        ),
        (
            {"clean_loss_steps": "5"},
            TypeError,
            r"clean_loss_steps must be a whole number >= 1 or None, got '5' of type str",
        ),
        ({"clean_loss_steps": True}, TypeError, r"clean_loss_steps must be a whole number"),
        ({"clean_loss_steps": 0}, NEFTuneError, r"clean_loss_steps must be >= 1 or None, got 0"),
        ({"clean_loss_samples": 0}, NEFTuneError, r"clean_loss_samples must be >= 1, got 0"),
        ({"clean_loss_samples": 2.0}, TypeError, r"clean_loss_samples must be a whole number >= 1, got 2.0"),
        ({"log_stats": "no"}, TypeError, r"log_stats must be True or False, got 'no' of type str"),
        ({"log_stats": 1}, TypeError, r"log_stats must be True or False, got 1 of type int"),
    ],
)
def test_callback_refuses_bad_arguments(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        NEFTuneCallback(5.0, **kwargs)


def test_callback_keeps_good_arguments() -> None:
    callback = NEFTuneCallback(5.0, clean_loss_steps=10, clean_loss_samples=3, log_stats=False)
    assert (callback.clean_loss_steps, callback.clean_loss_samples, callback.log_stats) == (10, 3, False)
