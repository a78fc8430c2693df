"""`make test-llamafactory`: LLaMA-Factory SFT with packing, through `neftune run`, gets per-segment noise.

Runs `neftune run -- -m llamafactory.cli train cfg.yaml` (single process, CPU) on a tiny local Llama and an
Alpaca-format local dataset with `neftune_noise_alpha: 5`, under the noise probe, for `packing: true` (pads:
position id 0, mask 1, the pad id) and `neat_packing: true` (segment-id masks, pads mask 0). Exits non-zero on any
violation: a segment's max|noise| outside [0.97, 1.001] x alpha/sqrt(L d), noise on a pad, transformers' hook on.
A control run without `neftune run` (transformers' own hook) must be rejected by the same checks.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from toy_setup import ALPHA, alpaca_rows, control_result, run_probed, save_tiny_llama

VARIANTS = {
    "llamafactory-packing": {"packing": True},
    "llamafactory-neat-packing": {"packing": True, "neat_packing": True},
}
CONTROL = "llamafactory-packing-control"  # the same packed run without `neftune run`: transformers' hook


def config(work: Path, label: str, options: dict[str, object]) -> str:
    lines = {
        "model_name_or_path": str(work / "model"),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "toy",
        "dataset_dir": str(work / "data"),
        "template": "default",
        "cutoff_len": 192,
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "output_dir": str(work / f"out-{label}"),
        "logging_steps": 1,
        "max_steps": 4,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-3,
        "bf16": False,
        "save_strategy": "no",
        "report_to": "none",
        "neftune_noise_alpha": ALPHA,
        "seed": 0,
        **options,
    }
    return "".join(f"{key}: {json.dumps(value)}\n" for key, value in lines.items())


def main() -> int:
    start = time.monotonic()
    problems = []
    with tempfile.TemporaryDirectory(prefix="neftune-llamafactory-") as tmp:
        work = Path(tmp)
        pad_id = save_tiny_llama(work / "model")
        (work / "data").mkdir()
        (work / "data" / "toy.json").write_text(json.dumps(alpaca_rows()))
        (work / "data" / "dataset_info.json").write_text(json.dumps({"toy": {"file_name": "toy.json"}}))
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        for label, options in VARIANTS.items():
            cfg = work / f"{label}.yaml"
            cfg.write_text(config(work, label, options))
            target = ["-m", "neftune", "run", "--", "-m", "llamafactory.cli", "train", str(cfg)]
            problems += run_probed(label, target, work, pad_id, expect_packed=True, env=env)
        cfg = work / f"{CONTROL}.yaml"
        cfg.write_text(config(work, CONTROL, {"packing": True}))
        found = run_probed(
            CONTROL, ["-m", "llamafactory.cli", "train", str(cfg)], work, pad_id, expect_packed=True, env=env
        )
        problems += control_result(CONTROL, found)
    print(f"test-llamafactory: {'FAILED' if problems else 'passed'} in {time.monotonic() - start:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
