"""Peak resident memory of `neftune sweep`, by phase (data/tokenizer, model load, training, evaluation).

    python benchmarks/memory/sweep_peak.py                       # the embedded toy default, 1 cell
    python benchmarks/memory/sweep_peak.py --model path/to/SmolLM2-135M-Instruct.Q4_1.gguf --steps 3

A thread samples VmRSS from /proc every 20 ms; each phase reports the highest value seen while it ran. Linux only.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from neftune.sweep import SweepConfig, run_sweep, runner


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Sampler:
    def __init__(self) -> None:
        self.phase = "start"
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = rss_mib()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), value)
            time.sleep(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            before, self.phase = self.phase, name
            try:
                return function(*args, **kwargs)
            finally:
                self.phase = before

        return wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--alphas", default="5")
    parser.add_argument("--finetune", default="full")
    parser.add_argument("--eval-prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--heldout", type=int, default=32)
    args = parser.parse_args()
    with Sampler() as sampler, tempfile.TemporaryDirectory() as out:
        for name in ("load_run_data", "tokenizer_and_pairs"):  # the latter before 2026-12
            if hasattr(runner, name):
                setattr(runner, name, sampler.wrap("data + tokenizer", getattr(runner, name)))
        runner.load_model = sampler.wrap("model load", runner.load_model)
        runner._train = sampler.wrap("train (incl. model load)", runner._train)
        runner._evaluate = sampler.wrap("evaluate", runner._evaluate)
        config = SweepConfig(
            model=args.model,
            output_dir=out,
            alphas=tuple(float(a) for a in args.alphas.split(",")),
            steps=args.steps,
            finetune=args.finetune,
            eval_prompts=args.eval_prompts,
            max_new_tokens=args.max_new_tokens,
            heldout=args.heldout,
        )
        sampler.phase = "sweep"
        start = time.time()
        run_sweep(config, progress=False)
        seconds = time.time() - start
    print(f"model {args.model or 'embedded toy'}, {len(config.cells())} cell(s), {seconds:.0f} s")
    for phase, peak in sampler.peaks.items():
        print(f"  peak RSS during {phase:<26} {peak:8.0f} MiB")
    print(f"  peak RSS overall {max(sampler.peaks.values()):8.0f} MiB")


if __name__ == "__main__":
    main()
