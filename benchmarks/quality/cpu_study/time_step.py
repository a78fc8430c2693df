"""Cost of the CPU study's pieces with SmolLM2-135M + LoRA r16 (all linear layers), to size the training set.

Times (median of 2 after one warm-up, printed as they come): one training step on one Dolly example of about 256
tokens (forward, backward, AdamW); one packed row of 1024 tokens; the clean loss of 8 examples; greedy generation
of 96 new tokens for a batch of 8 prompts.

    python benchmarks/quality/cpu_study/time_step.py DIR/SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

from neftune.eval import completion_losses, generate_greedy
from neftune.sweep.data import load_pairs, split_pairs
from neftune.sweep.models import load_model, load_tokenizer

DOLLY = Path(__file__).resolve().parents[4] / "shared" / "data" / "dolly" / "dolly-6400.jsonl"


def _median_seconds(step, repeats: int = 2) -> float:  # type: ignore[no-untyped-def]
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    from peft import LoraConfig, get_peft_model

    gguf = sys.argv[1]
    torch.manual_seed(0)
    tokenizer = load_tokenizer(gguf, [])
    start = time.perf_counter()
    model = load_model(gguf, tokenizer, seed=0)
    load = time.perf_counter() - start
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    train, heldout = split_pairs(load_pairs(str(DOLLY), tokenizer), 200)
    texts = [p + c for p, c in train[:400]]
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
    index = min(range(len(texts)), key=lambda i: abs(lengths[i] - 256))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)

    def train_step(ids: torch.Tensor) -> None:
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    one = torch.tensor([tokenizer(texts[index])["input_ids"]])
    packed = [token for text in texts[:40] for token in tokenizer(text)["input_ids"]]
    row = torch.tensor([packed[:1024]])
    result: dict[str, object] = {"threads": torch.get_num_threads(), "load_seconds": round(load, 1)}
    result["example_tokens"] = int(one.shape[1])

    def record(key: str, seconds: float) -> None:
        result[key] = round(seconds, 2)
        print(key, result[key], flush=True)

    record("train_step_one_example_s", _median_seconds(lambda: train_step(one)))
    record("train_step_packed_row_1024_s", _median_seconds(lambda: train_step(row)))
    record("clean_loss_8_examples_s", _median_seconds(lambda: completion_losses(model, tokenizer, heldout[:8])))
    prompts = [p for p, _ in heldout[:8]]
    record(
        "generate_8x96_s", _median_seconds(lambda: generate_greedy(model, tokenizer, prompts, max_new_tokens=96), 1)
    )
    result["load_average"] = Path("/proc/loadavg").read_text().split()[:3]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
