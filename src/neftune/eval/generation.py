"""Greedy generation as the paper evaluated it: greedy decoding with repetition penalty 1.2."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ..eval_mode import clean_evaluation


def generate_greedy(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 128,
    repetition_penalty: float = 1.2,
    batch_size: int = 8,
) -> list[str]:
    """Completions of `prompts` (greedy, left-padded batches, eval mode, no noise), prompt text removed."""
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    outputs: list[str] = []
    try:
        with clean_evaluation(model):
            for start in range(0, len(prompts), batch_size):
                chunk = list(prompts[start : start + batch_size])
                batch = tokenizer(chunk, return_tensors="pt", padding=True).to(device)  # BOS as in training
                generated = model.generate(  # type: ignore[operator]
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    repetition_penalty=repetition_penalty,
                    pad_token_id=tokenizer.pad_token_id,
                )
                new_tokens = generated[:, batch["input_ids"].shape[1] :]
                outputs += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = padding_side
    return outputs
