"""Per-example completion losses: clean ones add up to the mean loss, noisy ones use the cell's noise and leave
nothing behind."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
from neftune import NEFTuneConfig, is_neftune_active
from neftune.eval import completion_losses, mean_completion_loss, noisy_completion_losses
from neftune.sweep.data import embedded_pairs
from neftune.sweep.models import load_model, load_tokenizer

PAIRS = embedded_pairs(12)


@pytest.fixture(scope="module")
def model_and_tokenizer():  # type: ignore[no-untyped-def]
    tokenizer = load_tokenizer(None, [p + c for p, c in PAIRS])
    return load_model(None, tokenizer, seed=0), tokenizer


def test_clean_losses_add_up_to_the_mean(model_and_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = model_and_tokenizer
    losses = completion_losses(model, tokenizer, PAIRS, batch_size=5)
    assert len(losses) == len(PAIRS) and all(tokens > 0 for _, tokens in losses)
    mean = sum(s for s, _ in losses) / sum(t for _, t in losses)
    assert mean == pytest.approx(mean_completion_loss(model, tokenizer, PAIRS), rel=1e-6)
    # batching does not change an example's loss
    assert [t for _, t in losses] == [t for _, t in completion_losses(model, tokenizer, PAIRS, batch_size=1)]


def test_noisy_losses(model_and_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = model_and_tokenizer
    model.train()
    clean = completion_losses(model, tokenizer, PAIRS)
    assert noisy_completion_losses(model, tokenizer, PAIRS, NEFTuneConfig(alpha=0.0)) == clean
    config = NEFTuneConfig(alpha=5.0, seed=3)
    noisy = noisy_completion_losses(model, tokenizer, PAIRS, config, draws=2)
    assert noisy == noisy_completion_losses(model, tokenizer, PAIRS, config, draws=2)  # seeded
    assert [t for _, t in noisy] == [t for _, t in clean]
    assert all(n != c for (n, _), (c, _) in zip(noisy, clean, strict=True))
    assert model.training and not is_neftune_active(model)
    assert completion_losses(model, tokenizer, PAIRS) == clean  # nothing left behind


def test_every_evaluation_gives_back_a_mixed_model_mixed(model_and_tokenizer) -> None:  # type: ignore[no-untyped-def]
    from neftune.eval import generate_greedy

    model, tokenizer = model_and_tokenizer
    model.train()
    model.model.layers[0].eval()  # a frozen block inside a training model
    before = [(name, module.training) for name, module in model.named_modules()]
    assert {training for _, training in before} == {True, False}
    completion_losses(model, tokenizer, PAIRS[:2])
    noisy_completion_losses(model, tokenizer, PAIRS[:2], NEFTuneConfig(alpha=5.0, seed=0), draws=1)
    generate_greedy(model, tokenizer, [p for p, _ in PAIRS[:2]], max_new_tokens=2)
    assert [(name, module.training) for name, module in model.named_modules()] == before
    model.train()
