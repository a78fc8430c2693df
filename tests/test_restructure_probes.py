"""Probes of the restructure's new pieces that found defects: the `neftune/...` entries go with training logs only,
`attach` adds no bogus duplicate-callback warnings, `NoiseMonitor` refuses what would log nonsense, and type
checkers see `neftune.SFTConfig` as a class."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("trl")
from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

from neftune import NEFTuneCallback, NEFTuneError, SFTConfig, SFTTrainer, apply_neftune
from neftune.monitor import NoiseMonitor
from neftune.toy import (
    cpu_training_kwargs,
    language_modeling_dataset,
    prompt_completion_dataset,
    tiny_llama,
    tiny_llama_for,
)

SRC = Path(__file__).resolve().parent.parent / "src"


def neftune_keys(entry: dict[str, float]) -> set[str]:
    return {key for key in entry if key.startswith("neftune/")}


def sft_trainer(tokenizer: Any, tmp_path: Path, **training: Any) -> SFTTrainer:
    evaluating = training.get("eval_strategy", "no") != "no"
    return SFTTrainer(
        model=tiny_llama_for(tokenizer),
        args=SFTConfig(**cpu_training_kwargs(str(tmp_path), **training)),
        train_dataset=prompt_completion_dataset(32),
        eval_dataset=prompt_completion_dataset(8, seed=1) if evaluating else None,
        processing_class=tokenizer,
    )


def plain_trainer(tokenizer: Any, tmp_path: Path, callbacks: list[Any], **training: Any) -> Trainer:
    evaluating = training.get("eval_strategy", "no") != "no"
    return Trainer(
        model=tiny_llama_for(tokenizer),
        args=TrainingArguments(**cpu_training_kwargs(str(tmp_path), **training)),
        train_dataset=language_modeling_dataset(tokenizer, rows=32),
        eval_dataset=language_modeling_dataset(tokenizer, rows=8, seed=1) if evaluating else None,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=callbacks,
    )


def entries_by_kind(history: list[dict[str, float]]) -> dict[str, list[dict[str, float]]]:
    kinds: dict[str, list[dict[str, float]]] = {"train": [], "eval": [], "summary": []}
    for entry in history:
        kind = "train" if "loss" in entry else "eval" if "eval_loss" in entry else "summary"
        kinds[kind].append(entry)
    return kinds


@pytest.mark.parametrize("trainer_kind", ["sft", "callback"])
def test_an_evaluation_between_logging_steps_gets_no_entries_and_splits_no_interval(
    tokenizer: Any, tmp_path: Path, trainer_kind: str
) -> None:
    # Evaluation at step 3 and 6, training logs at 2, 4, 6: the eval log at step 3 is no training log.
    schedule = {"eval_strategy": "steps", "eval_steps": 3, "logging_steps": 2, "max_steps": 6}
    if trainer_kind == "sft":
        trainer: Trainer = sft_trainer(tokenizer, tmp_path, **schedule)
    else:
        trainer = plain_trainer(tokenizer, tmp_path, [], **schedule)
        NEFTuneCallback(5.0).attach(trainer)
    trainer.train()
    kinds = entries_by_kind(trainer.state.log_history)
    assert [entry["step"] for entry in kinds["eval"]] == [3, 6]
    assert [neftune_keys(entry) for entry in kinds["eval"]] == [set(), set()]
    assert [entry["step"] for entry in kinds["train"]] == [2, 4, 6]
    assert [entry["neftune/noised_calls"] for entry in kinds["train"]] == [2.0, 2.0, 2.0]  # one per step


def test_the_training_summary_after_an_unlogged_last_step_gets_no_entries(tokenizer: Any, tmp_path: Path) -> None:
    trainer = sft_trainer(tokenizer, tmp_path, logging_steps=2, max_steps=5)
    trainer.train()
    kinds = entries_by_kind(trainer.state.log_history)
    assert [entry["step"] for entry in kinds["train"]] == [2, 4]
    assert all(entry["neftune/noised_calls"] == 2.0 for entry in kinds["train"])
    (summary,) = kinds["summary"]
    assert "train_runtime" in summary and neftune_keys(summary) == set()


class Reporter(TrainerCallback):
    def __init__(self, name: str) -> None:
        self.name = name


@contextmanager
def transformers_warnings() -> Iterator[list[str]]:
    """The messages transformers logs (its library logger does not propagate to pytest's caplog)."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    library = logging.getLogger("transformers")
    library.addHandler(handler)
    try:
        yield messages
    finally:
        library.removeHandler(handler)


def test_attach_keeps_two_callbacks_of_one_class_without_warning_again(tokenizer: Any, tmp_path: Path) -> None:
    first, second = Reporter("first"), Reporter("second")
    with transformers_warnings() as at_init:
        trainer = plain_trainer(tokenizer, tmp_path, [first, second])
    assert sum("already one" in message for message in at_init) == 1  # transformers' own, once, at init
    before = list(trainer.callback_handler.callbacks)
    callback = NEFTuneCallback(5.0)
    with transformers_warnings() as at_attach:
        callback.attach(trainer)
        callback.attach(trainer)
    assert at_attach == []
    assert trainer.callback_handler.callbacks == [callback, *before]


def test_attach_still_lets_transformers_warn_about_a_second_neftune_callback(tokenizer: Any, tmp_path: Path) -> None:
    trainer = plain_trainer(tokenizer, tmp_path, [NEFTuneCallback(5.0)])
    with transformers_warnings() as messages:
        NEFTuneCallback(5.0).attach(trainer)
    assert sum("NEFTuneCallback" in message and "already one" in message for message in messages) == 1


def test_monitor_refuses_stats_logging_on_a_handle_that_does_not_track_them() -> None:
    model = tiny_llama(64)
    with apply_neftune(model, 5.0) as handle:  # track_stats=False: read_stats() has no RMS, only NaN
        with pytest.raises(
            NEFTuneError, match=r"NoiseMonitor\(log_stats=True\) needs .*track_stats=True.*log_stats=False"
        ):
            NoiseMonitor(handle)
        assert NoiseMonitor(handle, log_stats=False).log_stats is False
    with apply_neftune(model, 5.0, track_stats=True) as handle:
        assert NoiseMonitor(handle).log_stats is True


def test_monitor_refuses_a_step_before_the_last_log_or_below_zero() -> None:
    model = tiny_llama(64).train()
    ids = torch.randint(2, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    with apply_neftune(model, 5.0) as handle:
        monitor = NoiseMonitor(handle, log_stats=False)
        monitor.start(0, 8)
        for step in range(4):
            monitor.advance(step, 8)
            model(input_ids=ids)
        assert monitor.log_entries(4)["neftune/noised_calls"] == 4.0
        with pytest.raises(NEFTuneError, match=r"step 2 is before step 4, the last one logged"):
            monitor.log_entries(2)
        with pytest.raises(NEFTuneError, match=r"step must be a non-negative int, got -1"):
            monitor.advance(-1, 8)
        with pytest.raises(NEFTuneError, match=r"step must be a non-negative int, got 1.5"):
            monitor.log_entries(1.5)  # type: ignore[arg-type]


def test_type_checkers_see_sft_config_as_a_class_users_can_subclass(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    user = tmp_path / "user_config.py"
    user.write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass

            from neftune import SFTConfig


            @dataclass
            class MyConfig(SFTConfig):
                extra: int = 1


            def make() -> SFTConfig:
                return MyConfig(output_dir="out")


            reveal_type(SFTConfig(output_dir="out"))
            """
        )
    )
    skipped = "torch,transformers,trl,datasets,peft,accelerate,triton,numpy,pydantic,tokenizers,axolotl"
    modules = ",".join(f"{name},{name}.*" for name in skipped.split(","))
    (tmp_path / "mypy.ini").write_text(
        f"[mypy]\nstrict = True\n[mypy-{modules}]\nfollow_imports = skip\nignore_missing_imports = True\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--cache-dir", "cache", "user_config.py"],
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert 'Revealed type is "neftune.integrations.sft_trainer.SFTConfig"' in result.stdout, result.stdout
    assert "error" not in result.stdout, result.stdout
