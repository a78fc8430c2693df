"""Seeded noise: identical for a seed whatever else uses the RNG, different across seeds, ranks and steps,
and the same sequence after resuming from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import EmbeddingOnlyModel

import neftune.rng
from neftune import NEFTuneConfig, apply_neftune


def noise_draws(config: NEFTuneConfig, steps: list[int], interleave_rng: bool = False) -> list[torch.Tensor]:
    model = EmbeddingOnlyModel(hidden=16)
    torch.nn.init.zeros_(model.embed_tokens.weight)
    handle = apply_neftune(model, config)
    model.train()
    draws = []
    for step in steps:
        handle.set_step(step)
        if interleave_rng:
            torch.rand(1000)  # unrelated use of the global RNG
        with torch.no_grad():
            draws.append(model(torch.zeros(2, 8, dtype=torch.long)))
    return draws


def test_same_seed_same_noise_whatever_else_uses_the_rng() -> None:
    torch.manual_seed(1)
    first = noise_draws(NEFTuneConfig(seed=7), [0, 1, 2])
    torch.manual_seed(999)
    second = noise_draws(NEFTuneConfig(seed=7), [0, 1, 2], interleave_rng=True)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], first[1])  # each step has its own stream


def test_different_seeds_differ_and_unseeded_follows_the_global_rng() -> None:
    assert not torch.equal(noise_draws(NEFTuneConfig(seed=7), [0])[0], noise_draws(NEFTuneConfig(seed=8), [0])[0])
    torch.manual_seed(3)
    a = noise_draws(NEFTuneConfig(), [0])[0]
    torch.manual_seed(3)
    b = noise_draws(NEFTuneConfig(), [0])[0]
    assert torch.equal(a, b)


def test_ranks_draw_different_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(neftune.rng, "distributed_rank", lambda: 0)
    rank0 = noise_draws(NEFTuneConfig(seed=7), [0])[0]
    monkeypatch.setattr(neftune.rng, "distributed_rank", lambda: 1)
    rank1 = noise_draws(NEFTuneConfig(seed=7), [0])[0]
    assert not torch.equal(rank0, rank1)


def test_micro_batches_of_one_step_draw_different_noise() -> None:
    model = EmbeddingOnlyModel(hidden=16)
    torch.nn.init.zeros_(model.embed_tokens.weight)
    handle = apply_neftune(model, NEFTuneConfig(seed=5))
    model.train()
    handle.set_step(4)
    with torch.no_grad():
        first = model(torch.zeros(2, 8, dtype=torch.long))
        handle.set_step(4)  # the same step again (gradient accumulation): the stream continues
        second = model(torch.zeros(2, 8, dtype=torch.long))
    assert not torch.equal(first, second)


def test_seeded_noise_state_survives_pickling() -> None:
    import pickle

    model = EmbeddingOnlyModel(hidden=16)
    apply_neftune(model, NEFTuneConfig(seed=5))
    model.train()
    model(torch.zeros(1, 4, dtype=torch.long))
    clone = pickle.loads(pickle.dumps(model))
    clone.train()
    assert clone(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 16)


def first_layer_inputs(trainer: Any) -> dict[int, torch.Tensor]:
    """The noisy embeddings (input of decoder layer 0) of every training forward, by optimizer step."""
    seen: dict[int, torch.Tensor] = {}

    def record(module: Any, args: Any, kwargs: Any) -> None:
        if torch.is_grad_enabled():
            hidden = args[0] if args else kwargs["hidden_states"]
            seen[trainer.state.global_step + 1] = hidden.detach().clone()

    trainer.model.model.layers[0].register_forward_pre_hook(record, with_kwargs=True)
    return seen


def test_resume_from_checkpoint_reproduces_the_noise_sequence(tokenizer: Any, tmp_path: Path) -> None:
    seed = 11
    pytest.importorskip("trl")
    from neftune import SFTConfig, SFTTrainer
    from neftune.toy import cpu_training_kwargs, prompt_completion_dataset, tiny_llama_for

    def trainer_for(output: Path, noise_seed: int, max_steps: int = 6) -> Any:
        args = SFTConfig(
            **cpu_training_kwargs(
                str(output), max_steps=max_steps, learning_rate=0.0, save_strategy="steps", save_steps=3
            ),
            neftune_seed=noise_seed,
        )
        return SFTTrainer(
            model=tiny_llama_for(tokenizer),
            args=args,
            train_dataset=prompt_completion_dataset(32),
            processing_class=tokenizer,
        )

    full = trainer_for(tmp_path / "full", seed)
    full_inputs = first_layer_inputs(full)
    full.train()
    resumed = trainer_for(tmp_path / "resumed", seed)
    resumed_inputs = first_layer_inputs(resumed)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    assert sorted(resumed_inputs) == [4, 5, 6]
    for step in (4, 5, 6):
        assert torch.equal(resumed_inputs[step], full_inputs[step])
    other = trainer_for(tmp_path / "other", seed + 1, max_steps=4)
    other_inputs = first_layer_inputs(other)
    other.train()
    assert not torch.equal(other_inputs[4], full_inputs[4])
