"""NEFTune for any transformers Trainer with `NEFTuneCallback` (also DPO, KTO, ORPO, GRPO and reward trainers).

Runs offline on CPU in seconds with a tiny Llama. For a real model:

    python examples/callback_trainer.py --model HuggingFaceTB/SmolLM2-135M --steps 200
"""

from __future__ import annotations

import argparse
import tempfile

from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

from neftune import NEFTuneCallback, apply_neftune
from neftune.toy import cpu_training_kwargs, language_modeling_dataset, tiny_llama_for, tiny_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="hub id or local directory (default: tiny offline model)")
    parser.add_argument("--alpha", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    if args.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(args.model)
    else:
        tokenizer = tiny_tokenizer()
        model = tiny_llama_for(tokenizer)
    data = language_modeling_dataset(tokenizer, rows=64)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)

    with tempfile.TemporaryDirectory() as output_dir:
        training_args = TrainingArguments(**cpu_training_kwargs(output_dir, max_steps=args.steps, logging_steps=5))
        # 1) The callback: applied at train begin, removed at train end, metrics in the logs.
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=data,
            data_collator=collator,
            callbacks=[NEFTuneCallback(args.alpha, clean_loss_steps=5)],
        )
        trainer.train()
        print({k: round(v, 4) for k, v in trainer.state.log_history[0].items() if k.startswith("neftune/")})

        # 2) Exception-safe without a callback: the handle removes the hooks even if train() raises.
        trainer = Trainer(model=model, args=training_args, train_dataset=data, data_collator=collator)
        with apply_neftune(trainer.model, args.alpha):
            trainer.train()


if __name__ == "__main__":
    main()
