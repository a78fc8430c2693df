"""How neftune's entries reach the logs without reaching into the Trainer: `attach`, the SFTTrainer's `log()`
override, the callback's documented fallback position, and the framework-agnostic `NoiseMonitor`."""

from __future__ import annotations

import warnings
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

NEFTUNE_KEYS = {"neftune/alpha", "neftune/noise_rms", "neftune/embed_rms", "neftune/noise_to_signal"}


class Reporter(TrainerCallback):
    """Stands for a `report_to` integration: it reads `logs` in its own on_log."""

    def __init__(self) -> None:
        self.seen: list[dict[str, float]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if "loss" in logs:
            self.seen.append(dict(logs))


def plain_trainer(tokenizer: Any, tmp_path: Path, callbacks: list[Any]) -> Trainer:
    return Trainer(
        model=tiny_llama_for(tokenizer),
        args=TrainingArguments(**cpu_training_kwargs(str(tmp_path))),
        train_dataset=language_modeling_dataset(tokenizer, rows=32),
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
