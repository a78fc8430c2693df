#!/usr/bin/env bash
# Runs on the project's device machine (CUDA, no package index, 64 MiB a call), from the repository root, over the
# kit that `make device-kit` built here (.device/, see benchmarks/gpu/kit.py and docs/GPU_RESULTS.md):
#
#   bash benchmarks/gpu/on_device.sh STEP [STEP ...]
#
#   setup      install .device/whl into /tmp/neftune-site (again when the kit's wheels change), put the Dolly file
#              where the scripts read it, record the machine and check every requirement's version -> $OUT/setup.txt
#   model      collect the carried model parts; once all are there, join them into .gemma/ (sha256 checked)
#   test       `make gpu-test`'s pytest run on the image's python3                  -> $OUT/gpu-test.log
#   bench      `make gpu-bench`'s benchmark; benchmarks/results/ (overhead_cuda.md is the README's
#              overhead-gpu-table block)                                          -> $OUT/gpu-bench.log, bench.tar.gz
#   replicate  run_gpu.sh on SmolLM2 for BUDGET seconds (default 300), resumable  -> $OUT/replicate.log,
#              replication.tar.gz (the study's files written in this call: unpack it at the repository root and
#              commit it); the cells also stay in /tmp/neftune-study for the next call to this machine
#
# Every step runs even when an earlier one failed, except after a setup that could not install the wheels or found
# no CUDA (exit 2): nothing later can run then. The exit status is the worst step's. A requirement whose version does
# not hold makes setup exit 1 and the run go on (the tests show what it breaks). The image's python3 holds the CUDA
# torch and triton: they are never replaced.
set -uo pipefail
OUT=${OUT:-/tmp/neftune-out}
SITE=${NEFTUNE_SITE:-/tmp/neftune-site}    # survives between calls to a warm machine, as .gemma/ does
PARTS=${NEFTUNE_PARTS:-/tmp/neftune-parts}
KEPT=${NEFTUNE_STUDY:-/tmp/neftune-study}  # the study's files, across calls to one machine (the tree copy lacks them)
STUDY=benchmarks/quality/gpu-replication
mkdir -p "$OUT"
export PYTHONPATH="$SITE:$PWD/src" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false TRANSFORMERS_NO_ADVISORY_WARNINGS=1

step_setup() {
  [ -f .device/manifest.json ] || { echo "no .device/manifest.json: build the kit (make device-kit) and carry it"; return 2; }
  local wheels
  wheels=$(python3 -c "import json; print(' '.join(json.load(open('.device/manifest.json'))['wheels']))") || return 2
  if [ "$(cat "$SITE/.installed" 2>/dev/null)" != "$wheels" ]; then
    local wheel paths=()
    for wheel in $wheels; do
      if [ ! -f ".device/whl/$wheel" ]; then
        echo "setup: .device/whl/$wheel is not here and this kit's wheels are not installed: a fresh machine (idle" \
          "over its warm time, or given back) needs the call that carries .device/whl (the manifest's last call)"
        return 2
      fi
      paths+=(".device/whl/$wheel")
    done
    rm -rf "$SITE"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "${paths[@]}" || return 2
    echo "$wheels" >"$SITE/.installed"
  fi
  if [ ! -f ../shared/data/dolly/dolly-6400.jsonl ] && [ -f .device/data/dolly-6400.jsonl ]; then
    # the same path as on the development machine, so a study resumed there or here has the same settings
    mkdir -p ../shared/data/dolly && cp .device/data/dolly-6400.jsonl ../shared/data/dolly/ || return 2
  fi
  {
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    # what the tests, the benchmark and the sweep import; get_device_name raises without CUDA
    python3 -c "import sys, torch, triton, transformers, trl, peft, datasets, accelerate, rouge_score, sacrebleu, gguf; \
print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, \
'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'datasets', \
datasets.__version__, torch.cuda.get_device_name())" || { echo "setup: import or CUDA failed"; exit 2; }
    python3 benchmarks/gpu/kit.py check
  } 2>&1 | tee "$OUT/setup.txt"
}

step_model() {
  [ -f .device/manifest.json ] || { echo "model: no .device/manifest.json (carry it)"; return 2; }
  mkdir -p "$PARTS" .gemma
  cp -f .device/model/part-* "$PARTS"/ 2>/dev/null
  local have need
  have=$(find "$PARTS" -name 'part-*' | wc -l)
  need=$(python3 -c "import json; print(len(json.load(open('.device/manifest.json'))['model']['parts']))") || return 2
  if [ "$have" -lt "$need" ]; then echo "model: $have of $need parts here; carry the next (manifest 'calls')"; return 0; fi
  python3 benchmarks/gpu/kit.py assemble "$PARTS" && cp -f "$PARTS"/*.gguf .gemma/
}

need_cuda() {
  python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else '$1: torch sees no CUDA GPU')"
}

step_test() {
  need_cuda test || return 2  # pytest would skip every GPU test and exit 0
  python3 -m pytest -m gpu -v -rs -p no:cacheprovider 2>&1 | tee "$OUT/gpu-test.log"
}

step_bench() {
  need_cuda bench || return 2
  python3 benchmarks/overhead.py --device cuda 2>&1 | tee "$OUT/gpu-bench.log" || return 1
  # not README.md: the one here is the tree as carried, and would undo edits made there since
  tar czf "$OUT/bench.tar.gz" benchmarks/results
}

step_replicate() {
  [ -f .gemma/SmolLM2-135M-Instruct.Q4_1.gguf ] || { echo "replicate: the model is not joined yet (step model)"; return 2; }
  local began="$KEPT.began"
  touch "$began"
  sleep 1  # files written from here on are newer than the mark
  mkdir -p "$STUDY" && python3 benchmarks/gpu/kit.py merge "$KEPT" "$STUDY" || return 2
  GGUFS=SmolLM2-135M-Instruct.Q4_1 PYTHON=python3 BUDGET=${BUDGET:-300} \
    bash benchmarks/quality/run_gpu.sh "$STUDY" 2>&1 | tee "$OUT/replicate.log"
  local status=$?
  mkdir -p "$KEPT" && cp -r "$STUDY"/. "$KEPT"/
  # what this call wrote or brought back from $KEPT; the cells the carried tree held are in the repository already
  find "$STUDY" -type f -newer "$began" -print0 | tar czf "$OUT/replication.tar.gz" --null -T -
  return $status
}

worst=0
for step in "$@"; do
  case $step in
    setup | model | test | bench | replicate) ;;
    *) echo "on_device.sh: unknown step '$step'; steps: setup model test bench replicate" >&2; exit 2 ;;
  esac
  echo "=== $step"
  "step_$step"
  status=$?
  echo "=== $step: exit $status"
  [ "$status" -gt "$worst" ] && worst=$status
  if [ "$step" = setup ] && [ "$status" -ge 2 ]; then exit "$status"; fi
done
exit "$worst"
