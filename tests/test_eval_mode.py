"""`clean_evaluation`: eval mode, no gradients and no noise inside; every module's own mode restored after."""

from __future__ import annotations

import pytest
import torch
from helpers import EmbeddingOnlyModel
from torch import nn

import neftune
from neftune import apply_neftune, clean_evaluation
from neftune.eval_mode import preserved_modes

INPUTS = {"input_ids": torch.arange(20).view(2, 10)}


def mixed_model() -> nn.Module:
    """Training at the top, a frozen eval-mode block below, a training layer inside that block."""
    model = EmbeddingOnlyModel()
    model.add_module("block", nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.1)))
    model.train()
    model.block.eval()
    model.block[0].train()
    return model


def modes(model: nn.Module) -> list[tuple[str, bool]]:
    return [(name, module.training) for name, module in model.named_modules()]


def test_a_mixed_model_comes_back_mixed() -> None:
    model = mixed_model()
    before = modes(model)
    assert {training for _, training in before} == {True, False}
    with clean_evaluation(model) as inside:
        assert inside is model
        assert not any(training for _, training in modes(model))
    assert modes(model) == before


def test_modes_are_restored_after_an_exception() -> None:
    model = mixed_model()
    before = modes(model)
    handle = apply_neftune(model, 5.0)
    with pytest.raises(RuntimeError, match="evaluation failed"), clean_evaluation(model):
        raise RuntimeError("evaluation failed")
    assert modes(model) == before
    assert torch.is_grad_enabled()
    assert handle.counts.suspended == 0
    model.train()
    assert not torch.equal(model(**INPUTS), model(**INPUTS))  # noised again


def test_no_noise_inside_even_in_training_mode_and_noise_after() -> None:
    model = EmbeddingOnlyModel()
    model.train()
    clean = model(**INPUTS).detach()
    apply_neftune(model, 5.0)
    assert not torch.equal(model(**INPUTS), clean)
    with clean_evaluation(model):
        model.embed_tokens.train()  # the hook would noise a training-mode module: the suspension is what stops it
        assert torch.equal(model(**INPUTS), clean)
    assert model.training and model.embed_tokens.training
    assert not torch.equal(model(**INPUTS), clean)


def test_no_gradients_inside() -> None:
    model = EmbeddingOnlyModel()
    assert torch.is_grad_enabled()
    with clean_evaluation(model):
        assert not torch.is_grad_enabled()
        assert not model(**INPUTS).requires_grad
    assert torch.is_grad_enabled() and model(**INPUTS).requires_grad


def test_nesting_keeps_the_outer_block_clean() -> None:
    model = mixed_model()
    before = modes(model)
    clean = model(**INPUTS).detach()  # no hook yet: the clean embeddings
    apply_neftune(model, 5.0)
    with clean_evaluation(model):
        with clean_evaluation(model):
            assert not torch.is_grad_enabled()
        assert not any(training for _, training in modes(model))  # the inner exit restored eval mode, not training
        assert not torch.is_grad_enabled()
        model.embed_tokens.train()
        assert torch.equal(model(**INPUTS), clean)  # still no noise
    assert modes(model) == before
    assert not torch.equal(model(**INPUTS), clean)


def test_preserved_modes_restores_flags_changed_inside() -> None:
    model = mixed_model()
    before = modes(model)
    with preserved_modes(model):
        model.train()
        model.embed_tokens.eval()
    assert modes(model) == before


def test_not_a_module_is_refused() -> None:
    with pytest.raises(TypeError, match=r"expected a torch\.nn\.Module, got dict"):
        with clean_evaluation({}):  # type: ignore[arg-type]
            pass


def test_exported_at_the_top() -> None:
    assert neftune.clean_evaluation is clean_evaluation
