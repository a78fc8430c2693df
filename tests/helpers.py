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
