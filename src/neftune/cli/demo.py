"""The quick-start job: a tiny Llama fine-tuned for a few steps with NEFTune on data made in code.

No downloads: the model is built from a config, the tokenizer is a character table, and the instruction
pairs are generated arithmetic. It prints, for the first padded batch, each row's real length, the largest
noise actually added, and the bound `alpha / sqrt(L * d)`, then the training loss with and without noise.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

import torch
from torch import nn

from ..apply import apply_neftune, disable_noise
from ..config import NEFTuneConfig
from ..toy import tiny_llama

_ALPHABET = string.digits + string.ascii_letters + " +-=?.:\n"
_PAD, _EOS = 0, 1
_HIDDEN_SIZE = 64  # 4096 in Llama-2-7B


@dataclass(frozen=True)
class DemoResult:
    row_lengths: list[int]
    max_noise: list[float]
    bounds: list[float]
    pad_noise_max: float
    first_loss: float
    last_loss: float
    last_clean_loss: float


def _encode(text: str) -> list[int]:
    return [_ALPHABET.index(char) + 2 for char in text] + [_EOS]


def make_examples(count: int, seed: int = 0) -> list[str]:
    """Instruction/response pairs of varying length, so batches carry real padding."""
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        a, b = rng.randint(0, 10 ** rng.randint(1, 4)), rng.randint(0, 999)
        if rng.random() < 0.5:
            examples.append(f"{a}+{b}={a + b}")
        else:
            examples.append(f"Question: what is {a} plus {b}? Explain briefly.\nAnswer: {a} + {b} = {a + b}.")
    return examples


def _batch(texts: list[str]) -> dict[str, torch.Tensor]:
    encoded = [_encode(text) for text in texts]
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), _PAD)
    attention_mask = torch.zeros(len(encoded), width, dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def run_demo(config: NEFTuneConfig | None = None, steps: int = 30, batch_size: int = 8, seed: int = 0) -> DemoResult:
    config = config or NEFTuneConfig()
    torch.manual_seed(seed)
    model: nn.Module = tiny_llama(len(_ALPHABET) + 2, _HIDDEN_SIZE, pad_token_id=_PAD, eos_token_id=_EOS, seed=seed)
    examples = make_examples(steps * batch_size, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    embedding: nn.Module = model.get_input_embeddings()  # type: ignore[operator]
    hidden = _HIDDEN_SIZE
    losses: list[float] = []
    with apply_neftune(model, config) as handle:
        model.train()
        first = _batch(examples[:batch_size])
        with torch.no_grad(), disable_noise(model):
            clean = embedding(first["input_ids"])
        captured: list[torch.Tensor] = []
        spy = embedding.register_forward_hook(lambda _m, _a, out: captured.append(out.detach()))
        for step in range(steps):
            handle.set_progress(step / steps)
            handle.set_step(step)
            if step == 0:
                first_alpha = handle.alpha  # what the schedule allows at the first step
            batch = _batch(examples[step * batch_size : (step + 1) * batch_size])
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))
            if step == 0:
                spy.remove()
        noise = (captured[0] - clean).double()
        mask = first["attention_mask"]
        lengths = mask.sum(1).tolist()
        with torch.no_grad(), disable_noise(model):
            clean_loss = float(model(**batch).loss)
    return DemoResult(
        row_lengths=lengths,
        max_noise=[float(noise[row][mask[row] == 1].abs().max()) for row in range(len(lengths))],
        bounds=[first_alpha / (length * hidden) ** 0.5 for length in lengths],
        pad_noise_max=float(noise[mask == 0].abs().max()) if (mask == 0).any() else 0.0,
        first_loss=losses[0],
        last_loss=losses[-1],
        last_clean_loss=clean_loss,
    )


def print_demo(result: DemoResult, config: NEFTuneConfig) -> None:
    print(
        f"NEFTune demo: tiny Llama (hidden {_HIDDEN_SIZE}), alpha={config.alpha}, scaling={config.scaling}, "
        f"noise={config.noise}, schedule={config.schedule}"
    )
    meaning = "the bound" if config.noise != "gaussian" else "the scale (gaussian noise is unbounded)"
    print(f"first batch, each row's largest noise vs alpha/sqrt(L*d), {meaning}:")
    print(f"{'row':>4} {'L':>4} {'max|noise|':>12} {'a/sqrt(Ld)':>10}")
    for row, (length, noise, bound) in enumerate(
        zip(result.row_lengths, result.max_noise, result.bounds, strict=True)
    ):
        print(f"{row:>4} {length:>4} {noise:>12.5f} {bound:>10.5f}")
    widest = max(result.row_lengths)
    padded_bound = result.bounds[result.row_lengths.index(widest)]
    print(f"(transformers' hook would use the padded L={widest} for every row: bound {padded_bound:.5f})")
    print(f"largest noise on padding: {result.pad_noise_max:.1f} (padding is never noised)")
    print(f"training loss (noisy): step 1 {result.first_loss:.3f} -> last step {result.last_loss:.3f}")
    print(f"last batch loss with the noise off: {result.last_clean_loss:.3f}")
