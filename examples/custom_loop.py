"""NEFTune in a hand-written PyTorch training loop with `apply_neftune`.

Runs offline on CPU in seconds with a tiny Llama built from a config. For a real model:

    python examples/custom_loop.py --model HuggingFaceTB/SmolLM2-135M-Instruct --steps 200

(`--model` takes a hub id or local directory and needs the hub or a local copy.)
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from neftune import apply_neftune, disable_noise
from neftune.toy import tiny_llama_for, tiny_tokenizer

TEXTS = [
    "Instruction: name a primary colour.\nResponse: Red.",
    "Instruction: what is the capital of France?\nResponse: Paris is the capital of France.",
    "Instruction: say hi.\nResponse: Hi!",
    "Instruction: list three fruits.\nResponse: Apple, banana and cherry.",
]


def load(model_name: str | None) -> tuple[torch.nn.Module, Any]:
    if model_name:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_name)
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
        return AutoModelForCausalLM.from_pretrained(model_name), tokenizer
    tokenizer = tiny_tokenizer()
    return tiny_llama_for(tokenizer, hidden_size=64), tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="hub id or local directory (default: a tiny model, offline)")
    parser.add_argument("--alpha", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    torch.manual_seed(0)
    model, tokenizer = load(args.model)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    # The handle removes the hooks when the block ends, also if training raises.
    with apply_neftune(model, args.alpha) as handle:
        print(f"noising {len(handle.modules)} module(s) with alpha={handle.config.alpha}")
        model.train()
        for step in range(args.steps):
            loss = model(**batch, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            with torch.no_grad(), disable_noise(model):
                clean_loss = model(**batch, labels=labels).loss
            if step % 5 == 0 or step == args.steps - 1:
                print(f"step {step:3d}  noisy loss {loss.item():.3f}  clean loss {clean_loss.item():.3f}")
    model.eval()  # generation and evaluation see clean embeddings: the hooks are gone


if __name__ == "__main__":
    main()
