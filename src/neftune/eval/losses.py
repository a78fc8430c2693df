"""Loss of completions given prompts, with the noise off: the clean training loss and the held-out loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..apply import disable_noise


def mean_completion_loss(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 8,
    max_length: int = 512,
) -> float:
    """Token-weighted mean cross-entropy of each completion given its prompt (prompt tokens not scored),
    in eval mode without noise."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        with torch.no_grad(), disable_noise(model):
            for start in range(0, len(pairs), batch_size):
                rows = []
                for prompt, completion in pairs[start : start + batch_size]:
                    prompt_ids = tokenizer(prompt)["input_ids"]  # with BOS, as the trainer tokenised it
                    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
                    if tokenizer.eos_token_id is not None:
                        completion_ids = [*completion_ids, tokenizer.eos_token_id]
                    ids = (prompt_ids + completion_ids)[:max_length]
                    labels = ([-100] * len(prompt_ids) + completion_ids)[:max_length]
                    rows.append((ids, labels))
                width = max(len(ids) for ids, _ in rows)
                pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
                input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows], device=device)
                labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows], device=device)
                mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows], device=device)
                logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
                loss = nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum"
                )
                total += float(loss)
                tokens += int((labels[:, 1:] != -100).sum())
    finally:
        model.train(was_training)
    return total / max(tokens, 1)
