"""Exact no-ops (eval, alpha=0, removed), gradients, handle, model-wide helpers, refusals and their messages."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from helpers import EmbeddingOnlyModel, padding_mask

import neftune
from neftune import NEFTuneConfig, NEFTuneError, apply_neftune, disable_noise, is_neftune_active, remove_neftune


def batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"input_ids": torch.randint(0, 64, (3, 10)), "attention_mask": padding_mask([10, 6, 2], 10)}


def test_eval_mode_alpha_zero_and_removed_are_bit_identical_to_no_hook() -> None:
    model = EmbeddingOnlyModel()
    inputs = batch()
    model.train()
    reference = model(**inputs)
    handle = apply_neftune(model, 5.0)
    model.eval()
    assert torch.equal(model(**inputs), reference)
    model.train()
    assert not torch.equal(model(**inputs), reference)
    assert handle.remove() == 1
    assert torch.equal(model(**inputs), reference)
    with pytest.warns(UserWarning, match="alpha is 0"):
        zero = apply_neftune(model, 0.0)
    assert zero.modules == () and not zero.active
    assert not is_neftune_active(model)
    assert torch.equal(model(**inputs), reference)


def test_alpha_zero_warns_only_once() -> None:
    with pytest.warns(UserWarning):
        apply_neftune(EmbeddingOnlyModel(), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_neftune(EmbeddingOnlyModel(), 0)


def test_fresh_noise_every_forward() -> None:
    model = EmbeddingOnlyModel()
    apply_neftune(model, 5.0)
    model.train()
    inputs = batch()
    assert not torch.equal(model(**inputs), model(**inputs))


def test_gradient_to_embedding_weight_equals_the_no_noise_gradient() -> None:
    """The noise is a detached additive term: d(loss)/d(output) passes to the weight unchanged."""
    inputs = batch()
    weights = torch.randn(3, 10, 16)

    def weight_grad(model: EmbeddingOnlyModel) -> torch.Tensor:
        model.zero_grad()
        (model(**inputs) * weights).sum().backward()
        grad = model.embed_tokens.weight.grad
        assert grad is not None
        return grad.clone()

    model = EmbeddingOnlyModel()
    model.train()
    clean_grad = weight_grad(model)
    apply_neftune(model, 15.0)
    assert torch.equal(weight_grad(model), clean_grad)


def test_output_keeps_dtype_device_and_is_out_of_place() -> None:
    model = EmbeddingOnlyModel(dtype=torch.bfloat16)
    apply_neftune(model, 5.0)
    model.train()
    seen: list[torch.Tensor] = []
    inner = model.embed_tokens.forward

    def spy(ids: torch.Tensor) -> torch.Tensor:
        out = inner(ids)
        seen.append(out)
        return out

    model.embed_tokens.forward = spy  # type: ignore[method-assign]
    out = model(**batch())
    raw = seen[0]
    assert out.dtype == torch.bfloat16 and out.device == raw.device
    assert out.data_ptr() != raw.data_ptr()
    assert not torch.equal(out, raw)


def test_handle_as_context_manager_removes_even_on_error() -> None:
    model = EmbeddingOnlyModel()
    with pytest.raises(RuntimeError), apply_neftune(model, 5.0) as handle:
        assert handle.active and handle.modules == (model.embed_tokens,)
        assert handle.config == NEFTuneConfig(alpha=5.0)
        raise RuntimeError("training failed")
    assert not is_neftune_active(model)
    assert not handle.active
    assert handle.remove() == 0
    assert model._forward_pre_hooks == {} and model._forward_hooks == {}


def test_disable_noise_suspends_and_nests() -> None:
    model = EmbeddingOnlyModel()
    inputs = batch()
    model.train()
    reference = model(**inputs)
    apply_neftune(model, 5.0)
    with disable_noise(model):
        with disable_noise(model):
            assert torch.equal(model(**inputs), reference)
        assert torch.equal(model(**inputs), reference)
    assert not torch.equal(model(**inputs), reference)


def test_remove_neftune_also_removes_deep_copies_and_is_idempotent() -> None:
    model = EmbeddingOnlyModel()
    apply_neftune(model, 5.0)
    model.add_module("copy", copy.deepcopy(model.embed_tokens))
    assert remove_neftune(model) == 2
    assert remove_neftune(model) == 0
    assert not is_neftune_active(model)


def test_deep_copied_model_keeps_working_noise() -> None:
    model = EmbeddingOnlyModel()
    apply_neftune(model, 5.0)
    twin = copy.deepcopy(model)
    inputs = batch()
    twin.eval()
    clean = twin(**inputs)
    twin.train()
    noisy = twin(**inputs)
    assert torch.equal(noisy[2, 2:], clean[2, 2:])  # the copy still sees the attention mask
    assert not torch.equal(noisy[:, :2], clean[:, :2])


@pytest.mark.parametrize(
    ("alpha", "error", "message"),
    [
        (-1.0, NEFTuneError, r"must be >= 0, got -1\.0"),
        (math.nan, NEFTuneError, r"must be finite, got nan"),
        (math.inf, NEFTuneError, r"must be finite, got inf"),
        ("5", TypeError, r"must be a real number .* got '5' of type str"),
        (True, TypeError, r"got True of type bool"),
        (None, TypeError, r"got None"),
    ],
)
def test_bad_alpha_is_refused_with_the_value_and_the_fix(alpha: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        apply_neftune(EmbeddingOnlyModel(), alpha)  # type: ignore[arg-type]
    with pytest.raises(error, match=message):
        NEFTuneConfig(alpha=alpha)  # type: ignore[arg-type]


def test_neftune_error_is_a_value_error() -> None:
    assert issubclass(NEFTuneError, ValueError)


def test_bad_scaling_is_refused() -> None:
    with pytest.raises(NEFTuneError, match=r"scaling must be one of \('per_sequence', 'padded'\), got 'batch'"):
        NEFTuneConfig(scaling="batch")  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    config = NEFTuneConfig()
    with pytest.raises(AttributeError):
        config.alpha = 1.0  # type: ignore[misc]


def test_second_application_is_refused() -> None:
    model = EmbeddingOnlyModel()
    apply_neftune(model, 5.0)
    with pytest.raises(NEFTuneError, match=r"already active on 'embed_tokens' \(alpha=5\.0\); call remove_neftune"):
        apply_neftune(model, 10.0)
    # nothing stacked: exactly one noise hook
    assert remove_neftune(model) == 1


def test_transformers_own_neftune_is_refused() -> None:
    from helpers import transformers_neftune_hook

    model = EmbeddingOnlyModel()
    model.embed_tokens.register_forward_hook(transformers_neftune_hook())
    with pytest.raises(NEFTuneError, match="transformers' own NEFTune hook"):
        apply_neftune(model, 5.0)
    # The attribute without the hook is stale (transformers 4.x after a crash, unsloth): not a conflict.
    attribute_only = EmbeddingOnlyModel()
    attribute_only.embed_tokens.neftune_noise_alpha = 5.0
    handle = apply_neftune(attribute_only, 5.0)
    assert handle.active and len(attribute_only.embed_tokens._forward_hooks) == 1


def test_model_without_input_embedding_needs_module_or_filter() -> None:
    class Bare(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = torch.nn.Embedding(10, 4)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.tok(input_ids)

    with pytest.raises(NEFTuneError, match=r"no working get_input_embeddings.*module=.*filter_fn="):
        apply_neftune(Bare(), 5.0)
    model = Bare()
    assert apply_neftune(model, 5.0, module=model.tok).modules == (model.tok,)
    other = Bare()
    handle = apply_neftune(other, 5.0, filter_fn=lambda module, name: name == "tok")
    assert handle.modules == (other.tok,)


def test_target_selection_errors() -> None:
    model = EmbeddingOnlyModel()
    with pytest.raises(NEFTuneError, match="not a submodule"):
        apply_neftune(model, 5.0, module=torch.nn.Embedding(3, 3))
    with pytest.raises(NEFTuneError, match="selected no module"):
        apply_neftune(model, 5.0, filter_fn=lambda module, name: False)
    with pytest.raises(NEFTuneError, match="either module= or filter_fn="):
        apply_neftune(model, 5.0, module=model.embed_tokens, filter_fn=lambda module, name: True)
    with pytest.raises(NEFTuneError, match="selected both '' and 'embed_tokens'"):
        apply_neftune(model, 5.0, filter_fn=lambda module, name: True)
    with pytest.raises(TypeError, match=r"needs a torch\.nn\.Module"):
        apply_neftune("model", 5.0)  # type: ignore[arg-type]


def test_non_tensor_embedding_output_is_an_error_in_training() -> None:
    class TupleEmbedding(torch.nn.Module):
        def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor]:
            return (ids.float(),)

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = TupleEmbedding()

    model = Model()
    apply_neftune(model, 5.0, module=model.emb)
    model.train()
    with pytest.raises(NEFTuneError, match="hooked 'emb', whose output is tuple"):
        model.emb(torch.ones(2, 3))


def test_unmatched_mask_warns_and_uses_full_length() -> None:
    model = EmbeddingOnlyModel(hidden=16)
    apply_neftune(model, 5.0)
    model.train()
    with pytest.warns(UserWarning, match=r"do not match the embedding output \(2, 6, 16\)"):
        model(torch.zeros(2, 6, dtype=torch.long), attention_mask=torch.ones(2, 9, dtype=torch.long))


def test_handle_repr_and_version() -> None:
    handle = apply_neftune(EmbeddingOnlyModel(), 5.0)
    assert repr(handle) == "NEFTuneHandle(alpha=5.0, scaling='per_sequence', modules=1, active=True)"
    assert isinstance(neftune.__version__, str) and neftune.__version__.count(".") == 2
