"""Real transformers and PEFT models from tiny configs: the hook lands where the model's forward looks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import capture_output, enable_checkpointing, padding_mask, tiny_gpt2, tiny_llama
from reference import row_bounds

from neftune import apply_neftune, is_neftune_active, remove_neftune

peft = pytest.importorskip("peft")
ALPHA = 5.0
LENGTHS = [16, 11, 4]


def inputs() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"input_ids": torch.randint(0, 128, (3, 16)), "attention_mask": padding_mask(LENGTHS, 16)}


def measured_noise(model: torch.nn.Module, hooked: torch.nn.Module, **batch: Any) -> torch.Tensor:
    """Output of `hooked` in train mode minus its output with the noise suspended (same weights, same call)."""
    from neftune import disable_noise

    model.train()
    with capture_output(hooked) as outputs, torch.no_grad():
        model(**batch)
        with disable_noise(model):
            model(**batch)
    return (outputs[0] - outputs[1]).double()


def assert_per_sequence_noise(noise: torch.Tensor, mask: torch.Tensor, hidden: int) -> None:
    bounds = row_bounds(mask, hidden, ALPHA)
    for row in range(noise.shape[0]):
        real = noise[row][mask[row] == 1]
        assert real.abs().max() <= bounds[row] * (1 + 1e-4)
        assert real.abs().max() >= 0.9 * bounds[row]
        assert (noise[row][mask[row] == 0] == 0).all()


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_causal_lm_noise_in_training_none_in_eval_nothing_after_removal(factory: Any) -> None:
    model = factory()
    batch = inputs()
    model.eval()
    with torch.no_grad():
        clean_logits = model(**batch).logits
    handle = apply_neftune(model, ALPHA)
    (hooked,) = handle.modules
    assert hooked is model.get_input_embeddings()
    assert_per_sequence_noise(measured_noise(model, hooked, **batch), batch["attention_mask"], 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, clean_logits)
    handle.remove()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def lora_config(**kwargs: Any) -> Any:
    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], **kwargs)


def test_lora_peft_model() -> None:
    model = peft.get_peft_model(tiny_llama(), lora_config())
    handle = apply_neftune(model, ALPHA)
    assert handle.modules == (model.base_model.model.model.embed_tokens,)
    assert_per_sequence_noise(measured_noise(model, handle.modules[0], **inputs()), inputs()["attention_mask"], 32)
    handle.remove()
    assert not is_neftune_active(model)


def test_lora_on_the_embedding_hooks_the_wrapper_so_the_delta_is_noised() -> None:
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"], init_lora_weights=False)
    model = peft.get_peft_model(tiny_llama(), config)
    handle = apply_neftune(model, ALPHA)
    (hooked,) = handle.modules
    assert type(hooked).__name__ == "Embedding" and type(hooked).__module__.startswith("peft.tuners.lora")
    assert_per_sequence_noise(measured_noise(model, hooked, **inputs()), inputs()["attention_mask"], 32)
    # the inner base layer is left alone: hooking it too would noise twice
    assert not any(True for h in hooked.base_layer._forward_hooks.values())


def needs_trainable_tokens() -> None:
    if "trainable_token_indices" not in peft.LoraConfig.__dataclass_fields__:
        pytest.skip(f"peft {peft.__version__} has no trainable_token_indices (peft >= 0.15)")


def test_trainable_token_indices_hooks_the_wrapper() -> None:
    needs_trainable_tokens()
    config = peft.LoraConfig(r=4, target_modules=["q_proj"], trainable_token_indices=[1, 2])
    model = peft.get_peft_model(tiny_llama(), config)
    handle = apply_neftune(model, ALPHA)
    (hooked,) = handle.modules
    assert type(hooked).__name__ == "TrainableTokensWrapper"
    assert_per_sequence_noise(measured_noise(model, hooked, **inputs()), inputs()["attention_mask"], 32)


def test_modules_to_save_hooked_after_wrapping() -> None:
    model = peft.get_peft_model(tiny_llama(), lora_config(modules_to_save=["embed_tokens"]))
    handle = apply_neftune(model, ALPHA)
    (hooked,) = handle.modules
    assert type(hooked).__name__ == "ModulesToSaveWrapper"
    assert_per_sequence_noise(measured_noise(model, hooked, **inputs()), inputs()["attention_mask"], 32)
    assert handle.remove() == 1


def test_modules_to_save_hooked_before_wrapping_noises_once_and_removes_the_copy() -> None:
    base = tiny_llama()
    handle = apply_neftune(base, ALPHA)
    model = peft.get_peft_model(base, lora_config(modules_to_save=["embed_tokens"]))
    wrapper = model.base_model.model.model.embed_tokens
    assert type(wrapper).__name__ == "ModulesToSaveWrapper"
    # PEFT deep-copied the hooked embedding: the active copy carries our hook and still sees the mask.
    assert_per_sequence_noise(measured_noise(model, wrapper, **inputs()), inputs()["attention_mask"], 32)
    with pytest.raises(Exception, match="already active"):
        apply_neftune(model, ALPHA)
    assert handle.remove() == 2  # the original and PEFT's copy
    assert remove_neftune(model) == 0
    model.train()
    with capture_output(wrapper) as outputs, torch.no_grad():
        model(**inputs())
        model(**inputs())
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_with_enable_input_require_grads(use_reentrant: bool) -> None:
    base = tiny_llama()
    enable_checkpointing(base, use_reentrant)
    base.enable_input_require_grads()
    model = peft.get_peft_model(base, lora_config())
    apply_neftune(model, ALPHA)
    model.train()
    batch = inputs()
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None and torch.isfinite(g).all() for g in lora_grads)
    assert sum(float(g.abs().sum()) for g in lora_grads if g is not None) > 0
    assert_per_sequence_noise(
        measured_noise(model, model.get_input_embeddings(), **batch), batch["attention_mask"], 32
    )
