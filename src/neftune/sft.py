"""`neftune sft`: one SFT run with NEFTune from the command line, for users who do not write scripts.

Every `trl.SFTConfig` option (`--learning_rate`, `--max_steps`, `--packing`, ...) plus neftune's
(`--neftune_noise_alpha`, `--neftune_scaling`, `--neftune_noise`, ...) and the model/data options below.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from .trl import SFTConfig


@dataclass
class SFTRunArguments:
    model: str | None = field(
        default=None, metadata={"help": "Hub id, local directory or .gguf file. Default: the embedded tiny model."}
    )
    dataset: str | None = field(
        default=None,
        metadata={"help": "Hub id or local .json/.jsonl (Alpaca, Dolly or messages). Default: embedded data."},
    )
    lora: bool = field(default=False, metadata={"help": "Train a LoRA adapter instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    max_train_examples: int | None = field(default=None, metadata={"help": "Use at most this many examples."})


def main(argv: Sequence[str] | None = None) -> None:
    import torch
    from datasets import Dataset
    from transformers import HfArgumentParser

    from .sweep.models import load_model, tokenizer_and_pairs
    from .trl import SFTTrainer

    arguments = list(argv) if argv is not None else sys.argv[1:]
    if not torch.cuda.is_available():  # TRL defaults to bf16, which its config refuses on CPU; the user's flags win
        arguments = ["--use_cpu", "true", "--bf16", "false", *arguments]
    parser = HfArgumentParser((SFTRunArguments, SFTConfig))  # type: ignore[arg-type]
    run, config = parser.parse_args_into_dataclasses(args=arguments)
    tokenizer, pairs = tokenizer_and_pairs(run.model, run.dataset)
    pairs = pairs[: run.max_train_examples] if run.max_train_examples else pairs
    peft_config = None
    if run.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=run.lora_r, lora_alpha=2 * run.lora_r, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    trainer = SFTTrainer(
        model=load_model(run.model, tokenizer, config.seed),
        args=config,
        train_dataset=Dataset.from_list([{"prompt": p, "completion": c} for p, c in pairs]),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.train()
    trainer.save_model(config.output_dir)
    print(f"saved to {config.output_dir}")
