"""`patch_transformers()` and `neftune run`: neftune's noise for trainers that only set `neftune_noise_alpha`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

import neftune
from neftune.hook import NoiseHook
from neftune.toy import cpu_training_kwargs, language_modeling_dataset, tiny_llama_for

REPO = Path(__file__).resolve().parents[1]


class HookCensus(TrainerCallback):
    """At every step: how many neftune hooks and how many of transformers' own hooks sit on the embedding."""

    def __init__(self, raise_at: int | None = None) -> None:
        self.ours: list[int] = []
        self.theirs: list[int] = []
        self.raise_at = raise_at

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        hooks = [hook for module in model.modules() for hook in module._forward_hooks.values()]
        self.ours.append(sum(isinstance(hook, NoiseHook) for hook in hooks))
        self.theirs.append(sum(getattr(hook, "__name__", "") == "neftune_post_forward_hook" for hook in hooks))
        if state.global_step == self.raise_at:
            raise RuntimeError("failed on purpose")


def trainer(tokenizer: Any, tmp_path: Path, census: HookCensus, **args: Any) -> Trainer:
    return Trainer(
        model=tiny_llama_for(tokenizer),
        args=TrainingArguments(**cpu_training_kwargs(str(tmp_path), max_steps=4, **args)),
        train_dataset=language_modeling_dataset(tokenizer, rows=16),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=[census],
    )


@pytest.fixture(autouse=True)
def _unpatched() -> Iterator[None]:
    neftune.unpatch_transformers()
    yield
    neftune.unpatch_transformers()


def test_without_the_patch_transformers_registers_its_own_hook(tokenizer: Any, tmp_path: Path) -> None:
    census = HookCensus()
    trainer(tokenizer, tmp_path, census, neftune_noise_alpha=5.0).train()
    assert census.theirs == [1, 1, 1, 1] and census.ours == [0, 0, 0, 0]


def test_the_patch_routes_neftune_noise_alpha_to_neftune(tokenizer: Any, tmp_path: Path) -> None:
    neftune.patch_transformers()
    census = HookCensus()
    run = trainer(tokenizer, tmp_path, census, neftune_noise_alpha=5.0)
    run.train()
    assert census.ours == [1, 1, 1, 1] and census.theirs == [0, 0, 0, 0]
    logged = [entry for entry in run.state.log_history if "neftune/noise_rms" in entry]
    assert logged and all(entry["neftune/alpha"] == 5.0 and entry["neftune/noise_rms"] > 0 for entry in logged)
    assert run.neftune_noise_alpha == 5.0  # restored after train()
    assert not any(isinstance(h, NoiseHook) for m in run.model.modules() for h in m._forward_hooks.values())
    assert not any(type(cb).__name__ == "NEFTuneCallback" for cb in run.callback_handler.callbacks)


def test_a_retry_after_a_crash_replaces_never_stacks(tokenizer: Any, tmp_path: Path) -> None:
    neftune.patch_transformers()
    census = HookCensus(raise_at=2)
    run = trainer(tokenizer, tmp_path, census, neftune_noise_alpha=5.0)
    with pytest.raises(RuntimeError, match="on purpose"):
        run.train()
    assert not any(isinstance(h, NoiseHook) for m in run.model.modules() for h in m._forward_hooks.values())
    census.raise_at = None
    run.train()
    assert max(census.ours) == 1 and max(census.theirs) == 0


def test_trainers_without_the_flag_are_left_alone_unless_the_patch_sets_alpha(tokenizer: Any, tmp_path: Path) -> None:
    neftune.patch_transformers()
    census = HookCensus()
    trainer(tokenizer, tmp_path / "a", census).train()
    assert census.ours == [0, 0, 0, 0]
    neftune.patch_transformers(neftune.NEFTuneConfig(alpha=3.0, scaling="padded"))  # replaces the settings
    census = HookCensus()
    run = trainer(tokenizer, tmp_path / "b", census)
    run.train()
    assert census.ours == [1, 1, 1, 1]
    assert {entry["neftune/alpha"] for entry in run.state.log_history if "neftune/alpha" in entry} == {3.0}


def test_patching_twice_wraps_once_and_unpatching_restores(tokenizer: Any) -> None:
    original = Trainer.train
    first = neftune.patch_transformers()
    wrapped = Trainer.train
    neftune.patch_transformers(2.0)
    assert Trainer.train is wrapped and wrapped.__wrapped__ is original  # type: ignore[attr-defined]
    with first:
        pass
    assert Trainer.train is original
    with neftune.patch_transformers() as patch:
        assert neftune.integrations.transformers_patch.is_transformers_patched() and patch.settings.config is None
    assert Trainer.train is original


def test_the_drop_in_trainer_is_not_doubled(tokenizer: Any, tmp_path: Path) -> None:
    from neftune import SFTConfig, SFTTrainer
    from neftune.toy import prompt_completion_dataset

    neftune.patch_transformers(5.0)
    census = HookCensus()
    run = SFTTrainer(
        model=tiny_llama_for(tokenizer),
        args=SFTConfig(**cpu_training_kwargs(str(tmp_path), max_steps=2), neftune_noise_alpha=5.0),
        train_dataset=prompt_completion_dataset(rows=8),
        processing_class=tokenizer,
        callbacks=[census],
    )
    run.train()
    assert census.ours == [1, 1]


def test_a_stale_transformers_attribute_is_not_a_conflict(tokenizer: Any, tmp_path: Path) -> None:
    """unsloth sets `embeddings.neftune_noise_alpha` without registering transformers' hook."""
    neftune.patch_transformers()
    census = HookCensus()
    run = trainer(tokenizer, tmp_path, census, neftune_noise_alpha=5.0)
    run.model.get_input_embeddings().neftune_noise_alpha = 5.0
    run.train()
    assert census.ours == [1, 1, 1, 1]


SCRIPT = """
import json, sys
from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments
from neftune.hook import NoiseHook
from neftune.toy import cpu_training_kwargs, language_modeling_dataset, tiny_llama_for, tiny_tokenizer

tokenizer = tiny_tokenizer()
alpha = float(sys.argv[2]) if sys.argv[2] != "none" else None
run = Trainer(
    model=tiny_llama_for(tokenizer),
    args=TrainingArguments(**cpu_training_kwargs(sys.argv[1], max_steps=2), neftune_noise_alpha=alpha),
    train_dataset=language_modeling_dataset(tokenizer, rows=8),
    data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
)
seen = []
run.model.get_input_embeddings().register_forward_hook(
    lambda module, args, out: seen.append(sum(isinstance(h, NoiseHook) for h in module._forward_hooks.values()))
)
run.train()
print("RESULT", json.dumps({"argv0": sys.argv[0], "hooks": max(seen), "name": __name__,
      "alphas": [e["neftune/alpha"] for e in run.state.log_history if "neftune/alpha" in e]}))
"""


def _neftune_run(tmp_path: Path, *args: str, env_path: str | None = None) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [env_path, str(REPO / "src")]))}
    completed = subprocess.run(
        [sys.executable, "-m", "neftune", "run", *args], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
    return result


def test_neftune_run_script_and_module(tmp_path: Path) -> None:
    script = tmp_path / "train_script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    honoured = _neftune_run(tmp_path, "--", str(script), str(tmp_path / "a"), "5")
    assert honoured == {"argv0": str(script), "hooks": 1, "name": "__main__", "alphas": [5.0]}
    untouched = _neftune_run(tmp_path, "--", str(script), str(tmp_path / "b"), "none")
    assert untouched["hooks"] == 0 and untouched["alphas"] == []
    forced = _neftune_run(
        tmp_path, "--alpha", "2", "--", "-m", "train_script", str(tmp_path / "c"), "none", env_path=str(tmp_path)
    )
    assert forced["hooks"] == 1 and forced["alphas"] == [2.0] and forced["name"] == "__main__"


def test_neftune_run_needs_a_target_after_the_separator(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for args in (["train.py"], ["--"], ["--", "-m"]):
        completed = subprocess.run(
            [sys.executable, "-m", "neftune", "run", *args], capture_output=True, text=True, env=env
        )
        assert completed.returncode != 0
        assert completed.stderr.strip().startswith("neftune run: error:")
        assert "Traceback" not in completed.stderr


def test_neftune_run_help_needs_no_separator() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    completed = subprocess.run(
        [sys.executable, "-m", "neftune", "run", "--help"], capture_output=True, text=True, env=env
    )
    assert completed.returncode == 0 and completed.stdout.startswith("usage: neftune run [--alpha A]")


def test_patch_transformers_refuses_a_bad_on_silent() -> None:
    with pytest.raises(neftune.NEFTuneError, match="on_silent"):
        neftune.patch_transformers(on_silent="loud")
    assert torch is not None


def test_a_callback_removed_during_training_does_not_hide_the_exception(tokenizer: Any, tmp_path: Path) -> None:
    class RemovesNeftune(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            run.pop_callback(neftune.NEFTuneCallback)
            raise RuntimeError("training failed on purpose")

    neftune.patch_transformers()
    run = trainer(tokenizer, tmp_path, HookCensus(), neftune_noise_alpha=5.0)
    run.add_callback(RemovesNeftune())
    with pytest.raises(RuntimeError, match="on purpose"):
        run.train()
    assert run.neftune_noise_alpha == 5.0  # the trainer's own setting is given back
    assert not any(isinstance(h, NoiseHook) for m in run.model.modules() for h in m._forward_hooks.values())
