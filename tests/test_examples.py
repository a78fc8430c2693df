"""Every example runs offline on CPU (each in a few seconds) and prints what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize(
    "args", [(), ("--packing",), ("--format", "conversational"), ("--format", "conversational", "--packing")]
)
def test_sft_trl(args: tuple[str, ...]) -> None:
    out = run_example("sft_trl.py", *args)
    assert "step  10" in out and "clean loss" in out and "noise/signal" in out


def test_callback_trainer() -> None:
    assert "'neftune/noise_rms'" in run_example("callback_trainer.py")


def test_peft_lora() -> None:
    out = run_example("peft_lora.py", "--lora-embeddings")
    assert "noise hooks left after training: False" in out and "'neftune/noised_calls': 5.0" in out


def test_dpo() -> None:
    assert "step 6" in run_example("dpo.py")


def test_custom_loop() -> None:
    out = run_example("custom_loop.py")
    assert "noising 1 module(s) with alpha=5.0" in out and "step  19" in out
