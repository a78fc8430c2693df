"""`NEFTuneCallback` on a plain transformers `Trainer` and on TRL's `DPOTrainer`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

from neftune import NEFTuneCallback, NEFTuneError, apply_neftune, is_neftune_active
from neftune.installed_hooks import noise_hooks
from neftune.toy import cpu_training_kwargs, language_modeling_dataset, preference_dataset, tiny_llama_for


class HookCounter(TrainerCallback):
    def __init__(self, raise_at: int | None = None) -> None:
        self.counts: list[int] = []
        self.raise_at = raise_at

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.counts.append(sum(1 for m in model.modules() for _ in noise_hooks(m)))
        if state.global_step == self.raise_at:
            raise RuntimeError("training failed on purpose")


def plain_trainer(tokenizer: Any, tmp_path: Path, callbacks: list[Any], model: Any = None, **kw: Any) -> Trainer:
    return Trainer(
        model=model if model is not None else tiny_llama_for(tokenizer),
        args=TrainingArguments(**cpu_training_kwargs(str(tmp_path), **kw)),
        train_dataset=language_modeling_dataset(tokenizer, rows=32),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=callbacks,
    )


def test_callback_on_plain_trainer_logs_everywhere(tokenizer: Any, tmp_path: Path) -> None:
    printed: list[dict[str, float]] = []

    class Reporter(TrainerCallback):  # stands for the console / TensorBoard / W&B callbacks
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            printed.append(dict(logs))

    counter = HookCounter()
    callback = NEFTuneCallback(5.0, clean_loss_steps=2, clean_loss_samples=8)
    trainer = plain_trainer(tokenizer, tmp_path, [Reporter(), counter])
    callback.attach(trainer)  # the public route ahead of callbacks registered before it
    trainer.train()
    assert counter.counts == [1] * 6
    assert not is_neftune_active(trainer.model)
    history = [e for e in trainer.state.log_history if "loss" in e]
    assert len(history) == 3
    for entry, seen_by_reporter in zip(history, printed, strict=False):
        assert entry["neftune/noised_calls"] == 2.0 and entry["neftune/alpha"] == 5.0
        assert 0 < entry["neftune/noise_to_signal"] < 10 and entry["neftune/clean_train_loss"] > 0
        # a callback registered *before* ours still saw our entries: ours runs first in on_log
        assert seen_by_reporter["neftune/noise_rms"] == entry["neftune/noise_rms"]


def test_transformers_alpha_plus_callback_is_refused_not_doubled(tokenizer: Any, tmp_path: Path) -> None:
    trainer = plain_trainer(tokenizer, tmp_path, [NEFTuneCallback(5.0)], neftune_noise_alpha=5.0)
    with pytest.raises(NEFTuneError, match="transformers' own NEFTune hook"):
        trainer.train()


def test_a_new_train_begin_replaces_the_hooks_of_a_failed_run(tokenizer: Any, tmp_path: Path) -> None:
    callback = NEFTuneCallback(5.0)
    failing = HookCounter(raise_at=2)
    trainer = plain_trainer(tokenizer, tmp_path, [callback, failing])
    with pytest.raises(RuntimeError, match="on purpose"):
        trainer.train()
    assert is_neftune_active(trainer.model)  # a callback cannot see the exception...
    trainer.remove_callback(failing)
    counter = HookCounter()
    trainer.add_callback(counter)
    trainer.train()
    assert counter.counts == [1] * 6  # ...but the next run replaces, never stacks
    assert not is_neftune_active(trainer.model)


def test_handle_as_context_manager_is_exception_safe_for_plain_trainer(tokenizer: Any, tmp_path: Path) -> None:
    trainer = plain_trainer(tokenizer, tmp_path, [HookCounter(raise_at=2)])
    with pytest.raises(RuntimeError), apply_neftune(trainer.model, 5.0):
        trainer.train()
    assert not is_neftune_active(trainer.model)


def test_never_called_module_raises_naming_it(tokenizer: Any, tmp_path: Path) -> None:
    model = tiny_llama_for(tokenizer)
    model.unused_embedding = torch.nn.Embedding(4, 32)
    callback = NEFTuneCallback(5.0, filter_fn=lambda module, name: name == "unused_embedding")
    trainer = plain_trainer(tokenizer, tmp_path, [callback], model=model)
    with pytest.raises(
        NEFTuneError,
        match=r"no noise during the last 2 training step\(s\): the hooked module "
        r"'unused_embedding' was never called",
    ):
        trainer.train()


def test_embedding_in_eval_mode_warns_when_asked(tokenizer: Any, tmp_path: Path) -> None:
    model = tiny_llama_for(tokenizer)
    embedding = model.get_input_embeddings()

    def keep_embedding_in_eval_mode(module: Any, args: Any) -> None:  # a user bug the check must catch
        embedding.eval()

    model.register_forward_pre_hook(keep_embedding_in_eval_mode)
    trainer = plain_trainer(tokenizer, tmp_path, [NEFTuneCallback(5.0, on_silent="warn")], model=model)
    with pytest.warns(RuntimeWarning, match=r"'model.embed_tokens' was called 2 times: 2 in eval mode"):
        trainer.train()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clean_loss_steps": 0}, "clean_loss_steps must be >= 1 or None"),
        ({"clean_loss_samples": 0}, "clean_loss_samples must be >= 1"),
        ({"on_silent": "ignore"}, "on_silent must be 'raise' or 'warn'"),
    ],
)
def test_callback_argument_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(NEFTuneError, match=message):
        NEFTuneCallback(5.0, **kwargs)


def dpo_reference_and_policy(
    tokenizer: Any, tmp_path: Path, mode: str
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Log-probs of every reference (no-grad) and policy forward in 2 DPO steps with lr 0 (weights fixed)."""
    trl = pytest.importorskip("trl")
    peft = pytest.importorskip("peft")
    trainer = trl.DPOTrainer(
        model=tiny_llama_for(tokenizer),
        args=trl.DPOConfig(**cpu_training_kwargs(str(tmp_path), max_steps=2, learning_rate=0.0, logging_steps=1)),
        train_dataset=preference_dataset(),
        processing_class=tokenizer,
        peft_config=peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
        callbacks=[NEFTuneCallback(5.0)] if mode == "callback" else None,
    )
    assert trainer.ref_model is None
    if mode == "noise_everywhere":  # the failure the callback prevents: noise on the reference forward too
        apply_neftune(trainer.model, 5.0)
    reference: list[torch.Tensor] = []
    policy: list[torch.Tensor] = []

    def record(module: Any, args: Any, kwargs: Any, output: Any) -> None:
        value = output.log_probs if hasattr(output, "log_probs") else output.logits  # TRL < 1: plain logits
        (policy if torch.is_grad_enabled() else reference).append(value.detach().clone())

    trainer.model.register_forward_hook(record, with_kwargs=True)
    torch.manual_seed(0)
    trainer.train()
    return reference, policy


def test_dpo_reference_log_probs_are_computed_without_noise(tokenizer: Any, tmp_path: Path) -> None:
    clean_reference, clean_policy = dpo_reference_and_policy(tokenizer, tmp_path / "off", "off")
    reference, policy = dpo_reference_and_policy(tokenizer, tmp_path / "on", "callback")
    noisy_reference, _ = dpo_reference_and_policy(tokenizer, tmp_path / "all", "noise_everywhere")
    assert len(reference) == len(clean_reference) == 2
    assert all(torch.equal(a, b) for a, b in zip(reference, clean_reference, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(policy, clean_policy, strict=True))  # the policy is noised
    assert not any(torch.equal(a, b) for a, b in zip(noisy_reference, clean_reference, strict=True))


def _kto(tokenizer: Any, output_dir: str, callback: NEFTuneCallback) -> Any:
    trl = pytest.importorskip("trl")
    peft = pytest.importorskip("peft")
    from datasets import Dataset

    from neftune.toy import TEXTS

    rows = [{"prompt": p + " ", "completion": c, "label": i % 2 == 0} for i, (p, c) in enumerate(TEXTS * 2)]
    return trl.KTOTrainer(
        model=tiny_llama_for(tokenizer),
        args=trl.KTOConfig(**cpu_training_kwargs(output_dir, max_steps=2, logging_steps=1)),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
        callbacks=[callback],
    )


def _reward(tokenizer: Any, output_dir: str, callback: NEFTuneCallback) -> Any:
    trl = pytest.importorskip("trl")
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    return trl.RewardTrainer(
        model=AutoModelForSequenceClassification.from_config(config),
        args=trl.RewardConfig(**cpu_training_kwargs(output_dir, max_steps=2, logging_steps=1)),
        train_dataset=preference_dataset(16),
        processing_class=tokenizer,
        callbacks=[callback],
    )


def _grpo(tokenizer: Any, output_dir: str, callback: NEFTuneCallback) -> Any:
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from neftune.toy import TEXTS

    return trl.GRPOTrainer(
        model=tiny_llama_for(tokenizer),
        reward_funcs=lambda completions, **kwargs: [float(len(c)) for c in completions],
        args=trl.GRPOConfig(
            **cpu_training_kwargs(output_dir, max_steps=2, logging_steps=1, per_device_train_batch_size=4),
            num_generations=2,
            max_completion_length=8,
        ),
        train_dataset=Dataset.from_list([{"prompt": p} for p, _ in TEXTS]),
        processing_class=tokenizer,
        callbacks=[callback],
    )


def _orpo(tokenizer: Any, output_dir: str, callback: NEFTuneCallback) -> Any:
    orpo = pytest.importorskip("trl.experimental.orpo")  # TRL 1.x keeps ORPO under experimental
    return orpo.ORPOTrainer(
        model=tiny_llama_for(tokenizer),
        args=orpo.ORPOConfig(**cpu_training_kwargs(output_dir, max_steps=2, logging_steps=1)),
        train_dataset=preference_dataset(16),
        processing_class=tokenizer,
        callbacks=[callback],
    )


@pytest.mark.parametrize(
    ("build", "clean_no_grad_forwards"), [(_kto, True), (_reward, False), (_grpo, True), (_orpo, False)]
)
def test_other_trl_trainers(tokenizer: Any, tmp_path: Path, build: Any, clean_no_grad_forwards: bool) -> None:
    """KTO (LoRA policy as its own reference), reward modelling, GRPO (generation under no_grad) and ORPO."""
    callback = NEFTuneCallback(5.0)
    seen: list[Any] = []
    forwards: list[int] = []  # training forwards with autograd, per step (TRL < 1 runs reward pairs as two)

    class Probe(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seen.append(callback.handle.counts)
            forwards.append(len(calls) - sum(forwards))

    calls: list[int] = []
    trainer = build(tokenizer, str(tmp_path), callback)
    trainer.model.register_forward_hook(
        lambda module, args, output: calls.append(1) if module.training and torch.is_grad_enabled() else None
    )
    trainer.add_callback(Probe())
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "neftune/noised_calls" in entry]
    assert len(logs) == 2 and all(count >= 1 for count in forwards)
    assert [entry["neftune/noised_calls"] for entry in logs] == forwards  # every training forward, once
    assert not is_neftune_active(trainer.model)
    if clean_no_grad_forwards:  # reference log-probs (KTO) and generation (GRPO) ran without noise
        assert seen[-1].no_grad > 0
