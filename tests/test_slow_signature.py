"""A 50-step tiny SFT run with alpha 0 and 5: the paper's first signature (clean training loss ends higher)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")
from neftune import SFTConfig, SFTTrainer
from neftune.toy import cpu_training_kwargs, prompt_completion_dataset, tiny_llama_for


def run(tokenizer: Any, output_dir: Path, alpha: float) -> list[dict[str, float]]:
    args = SFTConfig(
        **cpu_training_kwargs(str(output_dir), max_steps=50, logging_steps=10, learning_rate=2e-3),
        neftune_noise_alpha=alpha,
        neftune_clean_loss_steps=10,
        neftune_clean_loss_samples=32,
    )
    trainer = SFTTrainer(
        model=tiny_llama_for(tokenizer, 64),
        args=args,
        train_dataset=prompt_completion_dataset(256),
        processing_class=tokenizer,
    )
    trainer.train()
    return [entry for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.slow
def test_clean_training_loss_is_higher_with_neftune(tokenizer: Any, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="alpha is 0"):
        baseline = run(tokenizer, tmp_path / "a0", 0.0)
    noised = run(tokenizer, tmp_path / "a5", 5.0)
    assert [e["step"] for e in noised] == [10, 20, 30, 40, 50]
    assert all("neftune/noise_rms" not in e for e in baseline)
    assert all(e["neftune/noised_calls"] == 10.0 for e in noised)
    # measured here: 2.61 (alpha 0) vs 3.12 (alpha 5) at step 50
    assert noised[-1]["neftune/clean_train_loss"] > baseline[-1]["neftune/clean_train_loss"] + 0.2
    # tiny embeddings (init std 0.02, d=64, L~20): the noise is large relative to them (measured 1.7)
    assert 1.0 < noised[-1]["neftune/noise_to_signal"] < 3.0
