"""Loss of completions given prompts: the clean training loss and the held-out loss (noise off), and the noisy
training loss (the cell's noise on, averaged over draws) on the same examples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..apply import apply_neftune
from ..config import NEFTuneConfig
from ..eval_mode import clean_evaluation, preserved_modes

Pairs = Sequence[tuple[str, str]]  # (prompt, completion)


def _rows(tokenizer: Any, pairs: Pairs, max_length: int) -> list[tuple[list[int], list[int]]]:
    rows = []
    for prompt, completion in pairs:
        prompt_ids = tokenizer(prompt)["input_ids"]  # with BOS, as the trainer tokenised it
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            completion_ids = [*completion_ids, tokenizer.eos_token_id]
        rows.append(
            ((prompt_ids + completion_ids)[:max_length], ([-100] * len(prompt_ids) + completion_ids)[:max_length])
        )
    return rows


def _scored(
    model: nn.Module, rows: list[tuple[list[int], list[int]]], pad: int, batch_size: int
) -> list[tuple[float, int]]:
    """Per-example (summed cross-entropy, scored tokens) in the model's current mode and hooks."""
    device = next(model.parameters()).device
    result: list[tuple[float, int]] = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in chunk], device=device)
            labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in chunk], device=device)
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in chunk], device=device)
            logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
            targets = labels[:, 1:]
            per_token = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
            ).view(targets.shape)
            scored = targets != -100
            sums = (per_token * scored).sum(-1).tolist()
            counts = scored.sum(-1).tolist()
            result += [(float(s), int(c)) for s, c in zip(sums, counts, strict=True)]
    return result


def _pad_id(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else 0


def completion_losses(
    model: nn.Module, tokenizer: Any, pairs: Pairs, *, batch_size: int = 8, max_length: int = 512
) -> list[tuple[float, int]]:
    """(summed cross-entropy, scored tokens) of each completion given its prompt (prompt tokens not scored),
    in eval mode without noise; the prompt and completion are cut together at `max_length` as in training."""
    with clean_evaluation(model):
        return _scored(model, _rows(tokenizer, pairs, max_length), _pad_id(tokenizer), batch_size)


def mean_completion_loss(
    model: nn.Module, tokenizer: Any, pairs: Pairs, *, batch_size: int = 8, max_length: int = 512
) -> float:
    """Token-weighted mean cross-entropy of each completion given its prompt (prompt tokens not scored),
    in eval mode without noise."""
    losses = completion_losses(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length)
    return sum(s for s, _ in losses) / max(sum(c for _, c in losses), 1)


def noisy_completion_losses(
    model: nn.Module,
    tokenizer: Any,
    pairs: Pairs,
    config: NEFTuneConfig,
    *,
    draws: int = 4,
    batch_size: int = 8,
    max_length: int = 512,
) -> list[tuple[float, int]]:
    """`completion_losses` with `config`'s noise on (dropout off), each example's loss averaged over `draws` noise
    draws: what the training loss looks like with the noise, on exactly the examples of the clean loss.

    The noise is drawn for the evaluation's padded batches (`config.scaling` decides L there), from neftune's own
    generator when `config.seed` is set (draw k is step k). With alpha 0 this is the clean loss.
    """
    if config.alpha == 0 or draws < 1:
        return completion_losses(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length)
    totals: list[float] = [0.0] * len(pairs)
    counts: list[int] = [0] * len(pairs)
    rows = _rows(tokenizer, pairs, max_length)
    # Leaving the `with`, the hooks come off first, then every module's mode is restored.
    with preserved_modes(model), apply_neftune(model, config) as handle:
        model.eval()
        for module in handle.modules:
            module.train()  # the hook noises when its module is in training mode; the rest stays in eval mode
        for draw in range(draws):
            handle.set_step(draw)
            losses = _scored(model, rows, _pad_id(tokenizer), batch_size)
            for index, (loss, tokens) in enumerate(losses):
                totals[index] += loss / draws
                counts[index] = tokens
    return list(zip(totals, counts, strict=True))
