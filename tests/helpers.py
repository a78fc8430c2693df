"""Tiny models and measuring tools shared by the tests (no hub, no network)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class EmbeddingOnlyModel(nn.Module):
    """The smallest model shape neftune meets: forward takes the layout arguments and returns the embeddings."""

    def __init__(self, vocab: int = 64, hidden: int = 16, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, hidden, dtype=dtype)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        return self.embed_tokens(input_ids)


def padding_mask(lengths: list[int], seq_len: int, side: str = "right") -> torch.Tensor:
    mask = torch.zeros(len(lengths), seq_len, dtype=torch.long)
    for row, length in enumerate(lengths):
        if side == "right":
            mask[row, :length] = 1
        else:
            mask[row, seq_len - length :] = 1
    return mask


def left_padded_position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Position ids the way transformers' generate builds them for left padding (pads get 1)."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)


@contextmanager
def capture_output(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Record `module`'s final output (after every hook registered before this one) for each call."""
    outputs: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _a, out: outputs.append(out.detach().clone()))
    try:
        yield outputs
    finally:
        handle.remove()


def transformers_neftune_hook() -> Any:
    """transformers' hook: in `transformers.integrations.neftune` from 5.2, in `trainer_utils` before."""
    try:
        from transformers.integrations.neftune import neftune_post_forward_hook
    except ImportError:
        from transformers.trainer_utils import neftune_post_forward_hook
    return neftune_post_forward_hook


def activate_transformers_neftune(model: nn.Module, alpha: float) -> Any:
    """transformers' own NEFTune on `model` as its Trainer activates it; returns what `deactivate_...` takes."""
    try:
        from transformers.integrations.neftune import activate_neftune
    except ImportError:  # transformers < 5.2: what `Trainer._activate_neftune` does
        embeddings = model.get_input_embeddings()
        embeddings.neftune_noise_alpha = alpha
        return embeddings.register_forward_hook(transformers_neftune_hook())
    return activate_neftune(model, alpha)


def deactivate_transformers_neftune(model: nn.Module, handle: Any) -> None:
    try:
        from transformers.integrations.neftune import deactivate_neftune
    except ImportError:
        handle.remove()
        del model.get_input_embeddings().neftune_noise_alpha
        return
    deactivate_neftune(model, handle)


def enable_checkpointing(model: Any, use_reentrant: bool) -> None:
    """transformers' activation checkpointing (`gradient_checkpointing_enable` before 5.x renamed it)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})


def tiny_llama() -> nn.Module:
    from neftune.toy import tiny_llama as build

    model: nn.Module = build(vocab_size=128, hidden_size=32)
    return model


def tiny_gpt2() -> nn.Module:
    from transformers import AutoModelForCausalLM, GPT2Config

    config = GPT2Config(
        vocab_size=128,  # 50257
        n_embd=32,  # 768
        n_layer=2,  # 12
        n_head=4,  # 12
        n_positions=128,  # 1024
        embd_pdrop=0.0,
        resid_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def measured_kernel_noise(
    model: nn.Module,
    ids: torch.Tensor,
    inputs: dict[str, torch.Tensor],
    config: Any,
    rng_seed: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The noise `apply_neftune(model, config)` adds to `model(ids, **inputs)` (a training forward minus eval)."""
    from neftune import apply_neftune

    model.eval()
    clean = model(ids, **inputs).float()
    handle = apply_neftune(model, config)
    model.train()
    torch.manual_seed(rng_seed)
    with torch.no_grad():
        noisy = model(ids, **inputs)
    handle.remove()
    assert noisy.dtype == dtype
    return noisy.float() - clean
