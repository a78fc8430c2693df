"""`make test-axolotl`: `axolotl train` with the NEFTune plugin gets per-segment noise, with and without packing.

Runs the real `axolotl` CLI (`axolotl train cfg.yml --launcher python`, in this process so the probe sees the
forwards) on a tiny local Llama and a local Alpaca-format dataset, CPU only, with
`plugins: [neftune.integrations.axolotl.NEFTunePlugin]` and `neftune_noise_alpha: 5`: SFT with
`sample_packing: true`, SFT without it, and DPO (whose builder drops `neftune_noise_alpha`: the plugin adds the
noise there). Exits non-zero on any violation (see noise_probe.check_report). A control run without the plugin
(transformers' own hook, packed) must be rejected by the same checks.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from toy_setup import ALPHA, alpaca_rows, control_result, preference_rows, run_probed, save_tiny_llama

PLUGIN = "neftune.integrations.axolotl.NEFTunePlugin"
SFT = {"datasets": [{"path": "DATA/alpaca.jsonl", "ds_type": "json", "type": "alpaca"}]}
VARIANTS: dict[str, dict[str, Any]] = {
    "axolotl-sample-packing": {**SFT, "sample_packing": True, "pad_to_sequence_len": True},
    "axolotl-no-packing": {**SFT, "sample_packing": False},
    "axolotl-sample-packing-control": {**SFT, "sample_packing": True, "pad_to_sequence_len": True, "plugins": []},
    "axolotl-dpo": {
        "rl": "dpo",
        "datasets": [
            {"path": "DATA/preference.jsonl", "ds_type": "json", "split": "train", "type": "chatml.prompt_pairs"}
        ],
    },
}


def config(work: Path, label: str, options: dict[str, Any]) -> str:
    values: dict[str, Any] = {
        "base_model": str(work / "model"),
        "plugins": [PLUGIN],
        "neftune_noise_alpha": ALPHA,
        "dataset_prepared_path": str(work / f"prepared-{label}"),
        "val_set_size": 0,
        "output_dir": str(work / f"out-{label}"),
        "sequence_len": 512,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_steps": 3,
        "num_epochs": 1,
        "learning_rate": 1e-3,
        "optimizer": "adamw_torch",
        "lr_scheduler": "constant",
        "attn_implementation": "sdpa",
        "bf16": False,
        "fp16": False,
        "tf32": False,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
        **options,
    }
    text = json.dumps(values).replace("DATA/", str(work / "data") + "/")
    return text  # JSON is YAML


def main() -> int:
    start = time.monotonic()
    axolotl = shutil.which("axolotl", path=str(Path(sys.executable).parent))
    if axolotl is None:
        print(f"no axolotl executable next to {sys.executable}")
        return 1
    only = sys.argv[1:] or list(VARIANTS)
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="neftune-axolotl-") as tmp:
        work = Path(tmp)
        pad_id = save_tiny_llama(work / "model")
        (work / "data").mkdir()
        (work / "data" / "alpaca.jsonl").write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows()))
        (work / "data" / "preference.jsonl").write_text("".join(json.dumps(r) + "\n" for r in preference_rows()))
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "AXOLOTL_DO_NOT_TRACK": "1"}
        for label in only:
            cfg = work / f"{label}.yml"
            cfg.write_text(config(work, label, VARIANTS[label]))
            target = [axolotl, "train", str(cfg), "--launcher", "python"]
            expect_packed = bool(VARIANTS[label].get("sample_packing"))
            found = run_probed(label, target, work, pad_id, expect_packed=expect_packed, env=env)
            problems += control_result(label, found) if label.endswith("-control") else found
    print(f"test-axolotl: {'FAILED' if problems else 'passed'} in {time.monotonic() - start:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
