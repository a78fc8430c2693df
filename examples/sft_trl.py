"""Drop-in NEFTune for TRL's SFTTrainer: change the import, nothing else.

Runs offline on CPU in seconds with a tiny Llama and toy data (prompt/completion or conversational, packing on
or off). For a real model and dataset:

    python examples/sft_trl.py --model Qwen/Qwen2.5-0.5B --dataset databricks/databricks-dolly-15k --steps 500

(a hub id or local directory for each; Dolly rows are mapped to prompt/completion.)
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from neftune import SFTConfig, SFTTrainer  # was: from trl import SFTConfig, SFTTrainer
from neftune.toy import (
    conversational_dataset,
    cpu_training_kwargs,
    prompt_completion_dataset,
    tiny_llama_for,
    tiny_tokenizer,
)


def load(args: argparse.Namespace) -> tuple[object, object, object]:
    if args.model is None:
        tokenizer = tiny_tokenizer()
        data = conversational_dataset(64) if args.format == "conversational" else prompt_completion_dataset(64)
        return tiny_llama_for(tokenizer), tokenizer, data
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = load_dataset(args.dataset, split="train").map(
        lambda row: {"prompt": row["instruction"] + "\n", "completion": row["response"]},
        remove_columns=["instruction", "response"],
    )
    return AutoModelForCausalLM.from_pretrained(args.model), AutoTokenizer.from_pretrained(args.model), data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="hub id or local directory (default: tiny offline model)")
    parser.add_argument("--dataset", default="databricks/databricks-dolly-15k", help="used with --model")
    parser.add_argument("--format", choices=["prompt_completion", "conversational"], default="prompt_completion")
    parser.add_argument("--packing", action="store_true", help="pack sequences (padding-free batches)")
    parser.add_argument("--alpha", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    model, tokenizer, data = load(args)
    on_gpu = torch.cuda.is_available()  # under accelerate launch / torchrun: one process per GPU
    with tempfile.TemporaryDirectory() as output_dir:
        config = SFTConfig(
            **cpu_training_kwargs(output_dir, max_steps=args.steps, logging_steps=5, use_cpu=not on_gpu, bf16=on_gpu),
            packing=args.packing,
            neftune_noise_alpha=args.alpha,
            neftune_clean_loss_steps=5,  # also log the training loss with the noise off
        )
        trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)
        trainer.train()
    for entry in trainer.state.log_history:
        if "neftune/noise_rms" in entry:
            clean = entry.get("neftune/clean_train_loss", float("nan"))
            print(
                f"step {entry['step']:3d}  loss {entry['loss']:.3f}  clean loss {clean:.3f}  "
                f"noise/signal {entry['neftune/noise_to_signal']:.3f}"
            )


if __name__ == "__main__":
    main()
