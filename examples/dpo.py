"""NEFTune in TRL's DPOTrainer with `NEFTuneCallback`, a LoRA policy and no separate reference model.

The policy with its adapter disabled is the reference; its log-probs are computed without autograd, and neftune
adds no noise to such forwards, so the reference stays clean. Offline on CPU in seconds; for a real model:

    python examples/dpo.py --model Qwen/Qwen2.5-0.5B-Instruct --dataset trl-lib/ultrafeedback_binarized --steps 200
"""

from __future__ import annotations

import argparse
import tempfile

from peft import LoraConfig
from trl import DPOConfig, DPOTrainer

from neftune import NEFTuneCallback
from neftune.toy import cpu_training_kwargs, preference_dataset, tiny_llama_for, tiny_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="hub id or local directory (default: tiny offline model)")
    parser.add_argument("--dataset", default="trl-lib/ultrafeedback_binarized", help="used with --model")
    parser.add_argument("--alpha", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()

    if args.model:
        from datasets import load_dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer, model = AutoTokenizer.from_pretrained(args.model), AutoModelForCausalLM.from_pretrained(args.model)
        data = load_dataset(args.dataset, split="train")
    else:
        tokenizer = tiny_tokenizer()
        model, data = tiny_llama_for(tokenizer), preference_dataset(32)

    with tempfile.TemporaryDirectory() as output_dir:
        trainer = DPOTrainer(
            model=model,
            args=DPOConfig(**cpu_training_kwargs(output_dir, max_steps=args.steps, logging_steps=2)),
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=LoraConfig(r=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
            callbacks=[NEFTuneCallback(args.alpha)],
        )
        trainer.train()
    for entry in trainer.state.log_history[:-1]:
        print(f"step {entry['step']}  loss {entry['loss']:.4f}  noise/signal {entry['neftune/noise_to_signal']:.3f}")


if __name__ == "__main__":
    main()
