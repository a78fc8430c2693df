"""`scaling="padded"` is bit-identical to transformers' own `neftune_post_forward_hook`."""

from __future__ import annotations

import pytest
import torch
from helpers import padding_mask, tiny_llama, transformers_neftune_hook

from neftune import NEFTuneConfig, apply_neftune

pytest.importorskip("transformers")


def first_layer_input(model: torch.nn.Module, seed: int, **inputs: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = model.model.layers[0].register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone()),
        with_kwargs=True,
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        model(**inputs)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("alpha", [5.0, 15.0])
def test_padded_mode_matches_transformers_hook(dtype: torch.dtype, alpha: float) -> None:
    model = tiny_llama().to(dtype).train()
    inputs = {"input_ids": torch.randint(0, 128, (3, 17)), "attention_mask": padding_mask([17, 9, 4], 17)}

    embedding = model.get_input_embeddings()
    embedding.neftune_noise_alpha = alpha
    hf_handle = embedding.register_forward_hook(transformers_neftune_hook())
    expected = first_layer_input(model, 11, **inputs)
    hf_handle.remove()
    del embedding.neftune_noise_alpha

    ours = apply_neftune(model, NEFTuneConfig(alpha=alpha, scaling="padded"))
    got = first_layer_input(model, 11, **inputs)
    ours.remove()
    assert torch.equal(got, expected)
    assert not torch.equal(got, first_layer_input(model, 11, **inputs))  # the noise was really there
