"""results.json, report.md and plots of a sweep: every metric against alpha, with the spread over seeds."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

METRICS = [
    ("clean_train_loss", "clean train loss", "higher with NEFTune (signature 1)"),
    ("noisy_train_loss", "noisy train loss (logged)", "about the same"),
    ("heldout_loss", "held-out loss", "equal or lower (signature 2)"),
    ("train_rouge_l", "ROUGE-L on train prompts", "lower: less memorisation (signature 3)"),
    ("train_bleu", "BLEU on train prompts", "lower: less memorisation (signature 3)"),
    ("heldout_length_chars", "output length (chars)", "longer (signature 4)"),
    ("heldout_length_words", "output length (words)", "longer (signature 4)"),
    ("heldout_rep_2", "rep-2", "about the same (signature 4)"),
    ("heldout_rep_3", "rep-3", ""),
    ("heldout_rep_4", "rep-4", ""),
    ("heldout_log_diversity", "log-diversity", "about the same (signature 4)"),
]


def _stats(values: list[float]) -> dict[str, float]:
    finite = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    if not finite:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {
        "mean": statistics.fmean(finite),
        "std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
        "n": len(finite),
    }


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in results:
        groups.setdefault((row["noise"], row["alpha"]), []).append(row)
    return [
        {"noise": noise, "alpha": alpha, **{key: _stats([r[key] for r in rows]) for key, _, _ in METRICS}}
        for (noise, alpha), rows in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0]))
    ]


def _signatures(groups: list[dict[str, Any]]) -> list[str]:
    """Each signature: does every NEFTune group differ from the alpha-0 baseline in the paper's direction,
    by more than the seed spread (the two standard deviations added)?"""
    baseline = next((g for g in groups if g["alpha"] == 0), None)
    if baseline is None:
        return ["No alpha = 0 baseline in this sweep: signatures not assessed."]
    lines = []
    if baseline["clean_train_loss"]["n"] < 2:
        lines.append(
            "One seed per cell: there is no seed spread, so a verdict says only which way the difference went. "
            "Use several --seeds before drawing conclusions."
        )
    checks = [
        ("1. clean training loss higher", "clean_train_loss", +1),
        ("2. held-out loss equal or lower", "heldout_loss", -1),
        ("3. less memorisation (ROUGE-L)", "train_rouge_l", -1),
        ("3. less memorisation (BLEU)", "train_bleu", -1),
        ("4. longer outputs (chars)", "heldout_length_chars", +1),
    ]
    for label, key, direction in checks:
        verdicts = []
        for group in groups:
            if group["alpha"] == 0:
                continue
            delta = group[key]["mean"] - baseline[key]["mean"]
            spread = (group[key]["std"] or 0) + (baseline[key]["std"] or 0)
            if key == "heldout_loss":
                holds = delta <= spread
            else:
                holds = direction * delta > spread
            verdicts.append(f"alpha {group['alpha']:g} ({group['noise']}): {'yes' if holds else 'no'} ({delta:+.3f})")
        lines.append(f"- {label}: " + "; ".join(verdicts))
    diversity = [
        f"alpha {g['alpha']:g}: {g['heldout_log_diversity']['mean'] - baseline['heldout_log_diversity']['mean']:+.3f}"
        for g in groups
        if g["alpha"] != 0
    ]
    lines.append("- 4. log-diversity change vs alpha 0 (should stay about the same): " + "; ".join(diversity))
    return lines


def _markdown(
    config: Any, groups: list[dict[str, Any]], results: list[dict[str, Any]], n_train: int, n_heldout: int
) -> str:
    seeds = len(config.seeds)
    lines = [
        "# NEFTune sweep report",
        "",
        f"Model: `{config.model or 'embedded tiny Llama (hidden 64, 2 layers)'}`; "
        f"data: `{config.dataset or 'embedded templated instructions'}` "
        f"({n_train} training, {n_heldout} held-out examples); {config.finetune} fine-tuning, "
        f"{config.steps or config.epochs} {'steps' if config.steps else 'epochs'}, lr {config.learning_rate}, "
        f"batch {config.batch_size}x{config.gradient_accumulation}; {seeds} seed(s) per cell. Greedy decoding with "
        f"repetition penalty {config.repetition_penalty}, at most {config.max_new_tokens} new tokens, on "
        f"{config.eval_prompts} training and {config.eval_prompts} held-out prompts. Diversity over the first "
        f"{config.prefix_words} words of each output "
        "(shorter outputs dropped); `mean ± std` over seeds.",
        "",
        "| noise | alpha | " + " | ".join(label for _, label, _ in METRICS) + " |",
        "| --- | --- | " + " | ".join("---" for _ in METRICS) + " |",
    ]
    for group in groups:
        cells = [f"{group[key]['mean']:.3f} ± {group[key]['std']:.3f}" for key, _, _ in METRICS]
        lines.append(f"| {group['noise']} | {group['alpha']:g} | " + " | ".join(cells) + " |")
    lines += ["", "## The paper's signatures (section 5), against the alpha = 0 baseline", ""]
    lines += _signatures(groups)
    lines += [
        "",
        "Expected direction of each metric: " + "; ".join(f"{label}: {why}" for _, label, why in METRICS if why) + ".",
        "",
    ]
    lines += ["## One held-out output per cell", ""]
    for row in results:
        text = str(row.get("example_output", "")).replace("\n", " ")[:300]
        lines.append(f"- {row['noise']}, alpha {row['alpha']:g}, seed {row['seed']}: {text}")
    return "\n".join(lines) + "\n"


def _plot(groups: list[dict[str, Any]], results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in METRICS if m[0] != "heldout_rep_3" and m[0] != "heldout_rep_4"]
    columns = 3
    rows = math.ceil(len(shown) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows))
    noises = sorted({g["noise"] for g in groups if g["alpha"] != 0}) or ["none"]
    for axis, (key, label, _) in zip(axes.flat, shown, strict=False):
        for noise in noises:
            keep = [g for g in groups if g["noise"] in (noise, "none")]
            axis.errorbar(
                [g["alpha"] for g in keep],
                [g[key]["mean"] for g in keep],
                yerr=[g[key]["std"] for g in keep],
                marker="o",
                capsize=3,
                label=noise,
            )
            points = [r for r in results if r["noise"] in (noise, "none")]
            axis.scatter([r["alpha"] for r in points], [r[key] for r in points], s=8, alpha=0.4)
        axis.set_title(label, fontsize=9)
        axis.set_xlabel("alpha", fontsize=8)
    for axis in list(axes.flat)[len(shown) :]:
        axis.axis("off")
    if len(noises) > 1:
        axes.flat[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(config: Any, results: list[dict[str, Any]], n_train: int, n_heldout: int) -> dict[str, Any]:
    out = Path(config.output_dir)
    groups = aggregate(results)
    summary = {
        "config": config.signature()
        | {"alphas": list(config.alphas), "seeds": list(config.seeds), "noises": list(config.noises)},
        "train_examples": n_train,
        "heldout_examples": n_heldout,
        "cells": results,
        "groups": groups,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    (out / "report.md").write_text(_markdown(config, groups, results, n_train, n_heldout))
    _plot(groups, results, out / "metrics.png")
    return summary
