"""The tiny local model and dataset both framework runs train on; `run_probed` runs one target under the probe."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import noise_probe

from neftune.toy import TEXTS, tiny_llama_for, tiny_tokenizer

HERE = Path(__file__).resolve().parent
# d = 256: a segment's L * d uniform draws then reach 0.97 of the bound except with probability 0.97^(256 L).
HIDDEN = 256
ALPHA = 5.0


def save_tiny_llama(directory: Path) -> int:
    """A tiny Llama and its tokenizer in `directory` (from_pretrained-loadable); returns the pad token id."""
    tokenizer = tiny_tokenizer()
    model = tiny_llama_for(tokenizer, hidden_size=HIDDEN)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return int(tokenizer.pad_token_id)


def alpaca_rows(repeat: int = 6) -> list[dict[str, str]]:
    return [{"instruction": p, "input": "", "output": c} for _ in range(repeat) for p, c in TEXTS]


def preference_rows(repeat: int = 4) -> list[dict[str, Any]]:
    rows = []
    for _ in range(repeat):
        for index, (prompt, good) in enumerate(TEXTS):
            bad = TEXTS[(index + 3) % len(TEXTS)][1]
            rows.append({"prompt": prompt, "chosen": good, "rejected": bad})
    return rows


def run_probed(
    label: str, target: list[str], work: Path, pad_token_id: int, *, expect_packed: bool, env: dict[str, str]
) -> list[str]:
    """Run `target` (argv after `python`) under the noise probe in a fresh process; the violations found."""
    report = work / f"{label}.json"
    log = work / f"{label}.log"
    command = [
        sys.executable,
        str(HERE / "noise_probe.py"),
        "--alpha",
        str(ALPHA),
        "--pad-token-id",
        str(pad_token_id),
        "--report",
        str(report),
        "--",
        *target,
    ]
    print(f"[{label}] {' '.join(target)}", flush=True)
    start = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work, check=False)
    print(f"[{label}] exit {done.returncode} after {time.monotonic() - start:.0f} s (log: {log})", flush=True)
    if done.returncode != 0 or not report.exists():
        print(log.read_text()[-4000:])
        return [f"the run failed with exit code {done.returncode}"]
    return noise_probe.check_report(json.loads(report.read_text()), expect_packed=expect_packed, label=label)


def control_result(label: str, problems: list[str]) -> list[str]:
    """A control run trains with transformers' own hook: the probe must reject it, or it could not see the bug."""
    if any("failed with exit code" in problem for problem in problems):
        return problems
    if not problems:
        return [f"{label}: the probe passed transformers' own hook under packing; it cannot tell the two apart"]
    print(f"[{label}] rejected as it must be (transformers' own hook): control passed", flush=True)
    return []
