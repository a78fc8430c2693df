"""NEFTune in a hand-written PyTorch training loop with `apply_neftune`.

Runs offline on CPU in seconds with a tiny Llama built from a config. For a real model:

    python examples/custom_loop.py --model HuggingFaceTB/SmolLM2-135M-Instruct --steps 200

(`--model` takes a hub id or local directory and needs the hub or a local copy.)
"""

from __future__ import annotations

import argparse

import torch

from neftune import apply_neftune, disable_noise

TEXTS = [
    "Instruction: name a primary colour.\nResponse: Red.",
    "Instruction: what is the capital of France?\nResponse: Paris is the capital of France.",
    "Instruction: say hi.\nResponse: Hi!",
    "Instruction: list three fruits.\nResponse: Apple, banana and cherry.",
]


def load(model_name: str | None) -> tuple[torch.nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

    if model_name:
        return AutoModelForCausalLM.from_pretrained(model_name), AutoTokenizer.from_pretrained(model_name)
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel()
    tokenizer.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<unk>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>")
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=fast.pad_token_id,
    )
    return AutoModelForCausalLM.from_config(config), fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="hub id or local directory (default: a tiny model, offline)")
    parser.add_argument("--alpha", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    torch.manual_seed(0)
    model, tokenizer = load(args.model)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")  # type: ignore[operator]
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
