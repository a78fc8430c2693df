"""How neftune's entries reach the logs without reaching into the Trainer, and the probes that tried to break it:
`attach`, the SFTTrainer's `log()` override, the callback's documented fallback position, entries only in training
logs, the framework-agnostic `NoiseMonitor`, and `neftune.SFTConfig` as a class to type checkers."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings
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
NEFTUNE_KEYS = {"neftune/alpha", "neftune/noise_rms", "neftune/embed_rms", "neftune/noise_to_signal"}


class Reporter(TrainerCallback):
    """Stands for a `report_to` integration: it reads `logs` in its own on_log."""

    def __init__(self) -> None:
        self.seen: list[dict[str, float]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if "loss" in logs:
            self.seen.append(dict(logs))


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


def test_attach_puts_the_callback_first_keeps_the_others_in_order_and_is_idempotent(
    tokenizer: Any, tmp_path: Path
) -> None:
    first, second = Reporter(), Reporter()
    trainer = plain_trainer(tokenizer, tmp_path, [first, second])
    before = list(trainer.callback_handler.callbacks)
    callback = NEFTuneCallback(5.0)
    assert callback.attach(trainer) is callback
    assert callback.attach(trainer) is callback  # a second attach moves nothing and adds no copy
    after = trainer.callback_handler.callbacks
    assert after[0] is callback and after[1:] == before
    assert sum(1 for cb in after if isinstance(cb, NEFTuneCallback)) == 1


def test_unattached_callback_reaches_history_and_later_callbacks_not_earlier_ones(
    tokenizer: Any, tmp_path: Path
) -> None:
    # The documented fallback: passed in callbacks=[...], a callback listed before it logs without the entries.
    earlier, later = Reporter(), Reporter()
    trainer = plain_trainer(tokenizer, tmp_path, [earlier, NEFTuneCallback(5.0), later])
    trainer.train()
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(history) == 3 and len(earlier.seen) == 3 and len(later.seen) == 3
    for entry, early, late in zip(history, earlier.seen, later.seen, strict=True):
        assert NEFTUNE_KEYS <= entry.keys() and entry["neftune/alpha"] == 5.0
        assert not NEFTUNE_KEYS & early.keys()
        assert late["neftune/noise_rms"] == entry["neftune/noise_rms"] > 0


def test_sft_trainer_logs_its_entries_before_every_callback_and_once(tokenizer: Any, tmp_path: Path) -> None:
    reporter = Reporter()
    args = SFTConfig(**cpu_training_kwargs(str(tmp_path)), neftune_noise_alpha=5.0)
    trainer = SFTTrainer(
        model=tiny_llama_for(tokenizer),
        args=args,
        train_dataset=prompt_completion_dataset(32),
        processing_class=tokenizer,
        callbacks=[reporter],
    )
    callbacks = trainer.callback_handler.callbacks
    assert callbacks[0] is trainer.neftune_callback
    # Its log() override adds the entries before any callback runs, wherever a framework moves the callbacks.
    callbacks.insert(0, callbacks.pop(callbacks.index(reporter)))
    trainer.train()
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(history) == len(reporter.seen) == 3
    for entry, seen in zip(history, reporter.seen, strict=True):
        assert seen["neftune/noise_rms"] == entry["neftune/noise_rms"] > 0
        assert entry["neftune/noised_calls"] == 2.0  # one interval of 2 steps, counted once
    # the training summary at the last step carries no second set of entries
    assert not NEFTUNE_KEYS & trainer.state.log_history[-1].keys()


def _loop(model: Any, monitor: NoiseMonitor, steps: int, log_every: int) -> list[dict[str, float]]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    ids = torch.randint(2, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    logged = []
    for step in range(steps):
        monitor.advance(step, steps)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if (step + 1) % log_every == 0:
            logged.append(monitor.log_entries(step + 1))
    return logged


def test_monitor_in_a_custom_loop_follows_the_schedule_and_counts_each_interval() -> None:
    from neftune import NEFTuneConfig

    model = tiny_llama(64).train()
    with apply_neftune(model, NEFTuneConfig(alpha=8.0, schedule="linear"), track_stats=True) as handle:
        monitor = NoiseMonitor(handle)
        monitor.start(0, 4)
        logged = _loop(model, monitor, steps=4, log_every=2)
        assert [entry["neftune/noised_calls"] for entry in logged] == [2.0, 2.0]
        # linear decay over 4 steps: the alpha of each interval's last forward (steps 1 and 3) is 8 * (1 - step / 4)
        assert [entry["neftune/alpha"] for entry in logged] == [6.0, 2.0]
        assert all(entry["neftune/noise_to_signal"] > 0 for entry in logged)
        assert monitor.log_entries(4) == {}  # no step since the last log: nothing, and no false alarm


def test_monitor_raises_or_warns_on_an_interval_without_noise() -> None:
    model = tiny_llama(64)
    with apply_neftune(model, 5.0) as handle:
        monitor = NoiseMonitor(handle, log_stats=False)
        monitor.start(0, 2)
        model.eval()  # the classic silent no-op: training forwards of a model left in eval mode
        with pytest.raises(NEFTuneError, match=r"2 training step\(s\).*2 times: 2 in eval mode"):
            _loop(model, monitor, steps=2, log_every=2)
    with apply_neftune(model, 5.0) as handle:
        monitor = NoiseMonitor(handle, log_stats=False, on_silent="warn")
        monitor.start(0, 1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            entries = _loop(model, monitor, steps=1, log_every=1)[0]
        assert entries == {"neftune/alpha": 5.0, "neftune/noised_calls": 0.0}
        assert [str(w.message) for w in caught if "added no noise" in str(w.message)]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"on_silent": "ignore"}, NEFTuneError, "on_silent must be 'raise' or 'warn'"),
        ({"log_stats": 1}, TypeError, ""),
    ],
)
def test_monitor_refuses_bad_options(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with apply_neftune(tiny_llama(64), 5.0) as handle, pytest.raises(error, match=match):
        NoiseMonitor(handle, **kwargs)


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


class NamedCallback(TrainerCallback):
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
    first, second = NamedCallback("first"), NamedCallback("second")
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
