"""NEFTune with a LoRA adapter (PEFT), through the drop-in SFTTrainer.

The noise goes on the base embedding's output; with LoRA on the embedding itself, `modules_to_save` or
`trainable_token_indices`, neftune hooks PEFT's wrapper so the adapter's part is noised too. Offline on CPU in
seconds; for a real model:

    python examples/peft_lora.py --model meta-llama/Llama-2-7b-hf --steps 500
"""

from __future__ import annotations

import argparse
import tempfile

from peft import LoraConfig

from neftune import SFTConfig, SFTTrainer, is_neftune_active
from neftune.toy import cpu_training_kwargs, prompt_completion_dataset, tiny_llama_for, tiny_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="hub id or local directory (default: tiny offline model)")
    parser.add_argument("--alpha", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lora-embeddings", action="store_true", help="also put LoRA on embed_tokens")
    args = parser.parse_args()

    if args.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer, model = AutoTokenizer.from_pretrained(args.model), AutoModelForCausalLM.from_pretrained(args.model)
    else:
        tokenizer = tiny_tokenizer()
        model = tiny_llama_for(tokenizer)
    targets = ["q_proj", "v_proj"] + (["embed_tokens"] if args.lora_embeddings else [])
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=targets, task_type="CAUSAL_LM")

    with tempfile.TemporaryDirectory() as output_dir:
        config = SFTConfig(
            **cpu_training_kwargs(output_dir, max_steps=args.steps, logging_steps=5), neftune_noise_alpha=args.alpha
        )
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=prompt_completion_dataset(64),
            processing_class=tokenizer,
            peft_config=lora,
        )
        trainer.train()
    print("noise hooks left after training:", is_neftune_active(trainer.model))
    print({k: round(v, 4) for k, v in trainer.state.log_history[0].items() if k.startswith("neftune/")})


if __name__ == "__main__":
    main()
