"""results.json, report.md and metrics.png of a sweep directory: every metric against alpha with the spread over
seeds, the untrained baseline, and the paired comparisons with their verdicts. Rebuilt from the cell files alone,
so `neftune report DIR` re-analyses a finished (or half-finished) sweep without training."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import NEFTuneError
from .analysis import Outputs, comparisons, scaling_of
from .store import BASELINE, cell_name, read_cell, read_outputs

METRICS = [
    ("clean_train_loss", "clean train loss", "higher with NEFTune (signature 1)"),
    ("noisy_train_loss", "noisy train loss", "about the same as alpha 0's"),
    ("heldout_loss", "held-out loss", "equal or lower (signature 2)"),
    ("train_rouge_l", "ROUGE-L on train prompts", "lower: less memorisation (signature 3)"),
    ("train_bleu", "BLEU (0-100) on train prompts", "lower: less memorisation (signature 3)"),
    ("heldout_length_chars", "output length (chars)", "longer (signature 4)"),
    ("heldout_length_words", "output length (words)", "longer (signature 4)"),
    ("heldout_rep_2", "rep-2", "about the same (signature 4)"),
    ("heldout_rep_3", "rep-3", ""),
    ("heldout_rep_4", "rep-4", ""),
    ("heldout_log_diversity", "log-diversity", "about the same (signature 4)"),
]


@dataclass
class SweepData:
    """Everything a report is made of, as read back from a sweep directory."""

    directory: Path
    config: Any  # SweepConfig
    cells: list[dict[str, Any]]
    baseline: dict[str, Any] | None
    outputs: Outputs
    data: dict[str, Any]


def load_sweep(directory: Path) -> SweepData:
    """Read a sweep directory: its settings, finished cells (in sweep order), baseline and outputs."""
    from .runner import SweepConfig

    settings_path = directory / "sweep.json"
    results_path = directory / "results.json"
    if settings_path.exists():
        settings = json.loads(settings_path.read_text())
    elif results_path.exists():  # sweeps from before sweep.json: results.json carries the settings
        settings = dict(json.loads(results_path.read_text())["config"])
    else:
        raise NEFTuneError(
            f"{directory} is not a sweep directory (no sweep.json or results.json); pass the --output-dir of a "
            "`neftune sweep` run"
        )
    known = {f.name for f in dataclasses.fields(SweepConfig)}
    kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items() if k in known}
    kwargs["output_dir"] = str(directory)
    config = SweepConfig(**kwargs)
    cells, outputs = [], {}
    for noise, alpha, scaling, seed in config.cells():
        name = cell_name(noise, alpha, seed, scaling)
        cell = read_cell(directory, name)
        if cell is not None:
            cells.append(cell | {"_name": name})
            outputs[name] = read_outputs(directory, name)
    baseline = read_cell(directory, BASELINE)
    data_path = directory / "data.json"
    if data_path.exists():
        data = json.loads(data_path.read_text())
    else:
        old = json.loads(results_path.read_text()) if results_path.exists() else {}
        data = {"train_examples": old.get("train_examples"), "heldout_examples": old.get("heldout_examples")}
    return SweepData(directory, config, cells, baseline, outputs, data)


def _stats(values: list[Any]) -> dict[str, float]:
    finite = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    if not finite:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {
        "mean": statistics.fmean(finite),
        "std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
        "n": len(finite),
    }


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """mean, std and n over seeds of every metric, per (noise, alpha, scaling)."""
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = {}
    for row in results:
        groups.setdefault((row["noise"], row["alpha"], scaling_of(row)), []).append(row)
    return [
        {
            "noise": noise,
            "alpha": alpha,
            "scaling": scaling,
            **{key: _stats([r.get(key) for r in rows]) for key, _, _ in METRICS},
        }
        for (noise, alpha, scaling), rows in sorted(
            groups.items(), key=lambda item: (item[0][1], item[0][0], item[0][2])
        )
    ]


def pairing_check(cells: list[dict[str, Any]]) -> str:
    """Whether every cell of a seed started from the same weights and saw the same batches."""
    if not any("data_fingerprint" in c for c in cells):
        return "not recorded (cells from before the fingerprints)"
    by_seed: dict[int, set[tuple[str, str]]] = {}
    for cell in cells:
        by_seed.setdefault(cell["seed"], set()).add(
            (cell.get("init_fingerprint", ""), cell.get("data_fingerprint", ""))
        )
    broken = sorted(seed for seed, prints in by_seed.items() if len(prints) > 1)
    if broken:
        return f"BROKEN for seed(s) {broken}: cells of one seed differ in initial weights or batches"
    return "verified: within each seed, every cell had the same initial trainable weights and the same batches"


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _comparison_lines(rows: list[dict[str, Any]], margin: float) -> list[str]:
    if not rows:
        return ["No alpha = 0 cells in this sweep: nothing to compare against."]
    lines = [
        "Each row: the configuration minus the alpha-0 cell of the same seed (or per-sequence minus padded), mean "
        "over paired seeds, its 95% t interval over seeds and a 95% bootstrap interval over the evaluated examples "
        "(sentence BLEU for BLEU). Verdict: `reproduced` when the Holm-corrected two-sided t test (across the "
        "signatures of one configuration, level 0.05) and the bootstrap interval both put the difference on the "
        f"paper's side; `opposite` on the other side; otherwise `not established`. Held-out loss is a non-inferiority "
        f"test with margin {margin:g} nats fixed before the run: reproduced when the difference is significantly "
        "below the margin. Per-sequence vs padded: `reproduced` means per-sequence noise moves the metric further "
        "in the paper's direction than padded noise.",
        "",
        "| signature | configuration | n | mean diff | 95% t interval | bootstrap interval | p (Holm) | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        config = f"{row['noise']} alpha {row['alpha']:g} {row['scaling']}{' packed' if row['packing'] else ''}"
        config += f" vs {row['against']}"
        boot = (
            f"[{_fmt(row['bootstrap_low'])}, {_fmt(row['bootstrap_high'])}]"
            if row["bootstrap_low"] is not None
            else "n/a"
        )
        lines.append(
            f"| {row['signature']} | {config} | {row['n']} | {row['mean_diff']:+.4f} | "
            f"[{_fmt(row['ci_low'], 4)}, {_fmt(row['ci_high'], 4)}] | {boot} | {_fmt(row['p_holm'])} | "
            f"{row['verdict']} |"
        )
    return lines


def _markdown(sweep: SweepData, groups: list[dict[str, Any]], rows: list[dict[str, Any]], pairing: str) -> str:
    config = sweep.config
    truncation = sweep.data.get("truncation")
    trunc_text = (
        f"{truncation['completion_tokens_trained_fraction']:.1%} of the training completion tokens fit in "
        f"max_length {config.max_length} ({truncation['examples_truncated']} of {truncation['examples']} examples cut)"
        if truncation
        else "truncation not recorded"
    )
    lines = [
        "# NEFTune sweep report",
        "",
        f"Model: `{config.model or 'embedded tiny Llama (hidden 64, 2 layers)'}`; "
        f"data: `{config.dataset or 'embedded templated instructions'}` "
        f"({sweep.data.get('train_examples')} training, {sweep.data.get('heldout_examples')} held-out examples); "
        f"{config.finetune} fine-tuning, {config.steps or config.epochs} {'steps' if config.steps else 'epochs'}, "
        f"lr {config.learning_rate}, batch {config.batch_size}x{config.gradient_accumulation}, "
        f"max_length {config.max_length}, packing {'on (TRL bfd, padding-free)' if config.packing else 'off'}; "
        f"scalings {', '.join(config.scalings)}; {len(config.seeds)} seed(s) per cell; {trunc_text}.",
        "",
        f"Losses (nats per completion token): clean and noisy training loss on the same first "
        f"{sweep.data.get('loss_examples', 'n/a')} training examples (noisy: the cell's noise on, mean of "
        f"{config.noisy_loss_draws} draws, on the evaluation's padded batches of 8), held-out loss on all held-out "
        f"examples. Greedy decoding with repetition penalty {config.repetition_penalty}, at most "
        f"{config.max_new_tokens} new tokens, on {config.eval_prompts} training and {config.eval_prompts} held-out "
        f"prompts; ROUGE-L in [0, 1], BLEU is sacrebleu's corpus BLEU on its 0-100 scale. Diversity over the first "
        f"{config.prefix_words} words of each output (shorter outputs dropped). `mean ± std` over seeds; `untrained` "
        "is the model before fine-tuning, evaluated once.",
        "",
        f"Pairing by seed: {pairing}.",
        "",
        "| noise | alpha | scaling | " + " | ".join(label for _, label, _ in METRICS) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in METRICS) + " |",
    ]
    if sweep.baseline is not None:
        values = [_fmt(sweep.baseline.get(key)) for key, _, _ in METRICS]
        lines.append("| untrained | - | - | " + " | ".join(values) + " |")
    for group in groups:
        cells = [f"{_fmt(group[key]['mean'])} ± {_fmt(group[key]['std'])}" for key, _, _ in METRICS]
        lines.append(f"| {group['noise']} | {group['alpha']:g} | {group['scaling']} | " + " | ".join(cells) + " |")
    lines += ["", "## The paper's signatures (section 5): paired comparisons", ""]
    lines += _comparison_lines(rows, config.margin)
    lines += [
        "",
        "Expected direction of each metric: " + "; ".join(f"{label}: {why}" for _, label, why in METRICS if why) + ".",
        "",
        "## One held-out output per cell",
        "",
    ]
    for row in sweep.cells:
        text = str(row.get("example_output", "")).replace("\n", " ")[:300]
        lines.append(f"- {row['noise']} {scaling_of(row)}, alpha {row['alpha']:g}, seed {row['seed']}: {text}")
    return "\n".join(lines) + "\n"


def _plot(groups: list[dict[str, Any]], sweep: SweepData, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in METRICS if m[0] not in ("heldout_rep_3", "heldout_rep_4")]
    columns = 3
    rows = math.ceil(len(shown) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows))
    series = sorted({(g["noise"], g["scaling"]) for g in groups if g["alpha"] != 0}) or [("none", "none")]
    for axis, (key, label, _) in zip(axes.flat, shown, strict=False):
        for noise, scaling in series:
            keep = [g for g in groups if (g["noise"], g["scaling"]) in ((noise, scaling), ("none", "none"))]
            axis.errorbar(
                [g["alpha"] for g in keep],
                [g[key]["mean"] for g in keep],
                yerr=[g[key]["std"] for g in keep],
                marker="o",
                capsize=3,
                label=f"{noise} {scaling}",
            )
            points = [r for r in sweep.cells if (r["noise"], scaling_of(r)) in ((noise, scaling), ("none", "none"))]
            axis.scatter([r["alpha"] for r in points], [r.get(key, math.nan) for r in points], s=8, alpha=0.4)
        if sweep.baseline is not None and isinstance(sweep.baseline.get(key), (int, float)):
            axis.axhline(sweep.baseline[key], color="grey", linestyle="--", linewidth=1, label="untrained")
        axis.set_title(label, fontsize=9)
        axis.set_xlabel("alpha", fontsize=8)
    for axis in list(axes.flat)[len(shown) :]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(sweep: SweepData) -> dict[str, Any]:
    """Write results.json (cells, groups, baseline, comparisons), report.md and metrics.png; return the summary."""
    out = sweep.directory
    config = sweep.config
    cells = [{k: v for k, v in c.items() if k != "_name"} for c in sweep.cells]
    groups = aggregate(cells)
    rows = comparisons(sweep.cells, sweep.outputs, packing=config.packing, margin=config.margin)
    pairing = pairing_check(cells)
    summary = {
        "config": config.signature()
        | {
            "alphas": list(config.alphas),
            "seeds": list(config.seeds),
            "noises": list(config.noises),
            "scalings": list(config.scalings),
        },
        "train_examples": sweep.data.get("train_examples"),
        "heldout_examples": sweep.data.get("heldout_examples"),
        "data": sweep.data,
        "pairing": pairing,
        "cells": cells,
        "groups": groups,
        "baseline": sweep.baseline,
        "comparisons": rows,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    (out / "report.md").write_text(_markdown(sweep, groups, rows, pairing))
    _plot(groups, sweep, out / "metrics.png")
    return summary
