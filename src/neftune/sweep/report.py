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
    base_diversity = baseline["heldout_log_diversity"]["mean"]
    diversity = [
        f"alpha {g['alpha']:g}: {_signed(g['heldout_log_diversity']['mean'] - base_diversity)}"
        for g in groups
        if g["alpha"] != 0
    ]
    lines.append("- 4. log-diversity change vs alpha 0 (should stay about the same): " + "; ".join(diversity))
    return lines


SATURATED_LOG_DIVERSITY = 20.0  # -log(e^-20): no n-gram repeats at all within the prefix


def _signed(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.3f}"


def _cell(key: str, stat: dict[str, float]) -> str:
    """`mean ± std`; `n/a` where no output was long enough; no `± 0.000` for a single seed."""
    if stat["n"] == 0:
        return "n/a"
    if key == "heldout_log_diversity" and stat["mean"] >= SATURATED_LOG_DIVERSITY - 1e-9:
        return "20 (saturated)"
    if stat["n"] == 1:
        return f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def _table_notes(config: Any, groups: list[dict[str, Any]]) -> list[str]:
    notes = []
    if any(g[key]["n"] == 0 for g in groups for key, _, _ in METRICS):
        notes.append(
            f"n/a: no held-out output reached the {config.prefix_words}-word diversity prefix (shorter outputs are "
            "dropped); lower --prefix-words or raise --max-new-tokens."
        )
    if any(g["heldout_log_diversity"]["mean"] >= SATURATED_LOG_DIVERSITY - 1e-9 for g in groups):
        notes.append(
            f"log-diversity 20 (saturated): no output repeats a 2-, 3- or 4-gram within its first "
            f"{config.prefix_words} words, so the metric is at its ceiling and cannot show a change; use a longer "
            "--prefix-words and --max-new-tokens."
        )
    return ["", *notes] if notes else []


DEGENERATE_SHARE = 0.5  # a cell whose held-out outputs are mostly empty, looping or identical
LOSS_ROSE_BY = 0.02  # relative rise of the logged training loss from first to last log that is flagged
SMALL_DATA_SHARE = 0.5  # a run that sees less than half of the training examples is flagged


def _warnings(config: Any, results: list[dict[str, Any]], n_train: int) -> list[str]:
    """Runs whose numbers should not be read as NEFTune's effect: a rising loss, degenerate outputs, little data."""
    lines = []
    for row in results:
        name = f"{row['noise']}, alpha {row['alpha']:g}, seed {row['seed']}"
        first, last = row.get("first_train_loss", math.nan), row.get("noisy_train_loss", math.nan)
        if first == first and last == last and last > first * (1 + LOSS_ROSE_BY):
            lines.append(
                f"- {name}: the training loss rose ({first:.3f} -> {last:.3f}): the learning rate "
                f"({config.learning_rate:g}) is probably too high for this model; lower --learning-rate"
            )
        degenerate = row.get("heldout_degenerate", 0.0)
        if degenerate >= DEGENERATE_SHARE:
            lines.append(
                f"- {name}: {degenerate:.0%} of the held-out outputs are degenerate (empty, looping or identical); "
                "its metrics do not measure NEFTune"
            )
    if config.steps and n_train:
        seen = config.steps * config.batch_size * config.gradient_accumulation
        if seen < SMALL_DATA_SHARE * n_train:
            lines.append(
                f"- Each run saw at most {seen} of the {n_train} training examples ({seen / n_train:.1%}): the sweep "
                "measures a short run on a small part of the data; raise --steps or set --max-train-examples."
            )
    return ["", "## Warnings", "", *lines] if lines else []


def _markdown(
    config: Any,
    groups: list[dict[str, Any]],
    results: list[dict[str, Any]],
    n_train: int,
    n_heldout: int,
    prompt_format: str | None = None,
) -> str:
    seeds = len(config.seeds)
    lines = [
        "# NEFTune sweep report",
        "",
        f"Model: `{config.model or 'embedded tiny Llama (hidden 64, 2 layers)'}`; "
        f"data: `{config.dataset or 'embedded templated instructions'}` "
        f"({n_train} training, {n_heldout} held-out examples); {config.finetune} fine-tuning, "
        f"{config.steps or config.epochs} {'steps' if config.steps else 'epochs'}, lr {config.learning_rate}, "
        f"batch {config.batch_size}x{config.gradient_accumulation}; prompt format "
        f"{prompt_format or getattr(config, 'prompt_format', 'alpaca')}; {seeds} seed(s) per cell. Greedy decoding "
        "with "
        f"repetition penalty {config.repetition_penalty}, at most {config.max_new_tokens} new tokens, on "
        f"{config.eval_prompts} training and {config.eval_prompts} held-out prompts. Diversity over the first "
        f"{config.prefix_words} words of each output "
        "(shorter outputs dropped); "
        + ("1 seed, no spread: each value is a single run." if seeds == 1 else "`mean ± std` over seeds."),
        "",
        "| noise | alpha | " + " | ".join(label for _, label, _ in METRICS) + " |",
        "| --- | --- | " + " | ".join("---" for _ in METRICS) + " |",
    ]
    for group in groups:
        cells = [_cell(key, group[key]) for key, _, _ in METRICS]
        lines.append(f"| {group['noise']} | {group['alpha']:g} | " + " | ".join(cells) + " |")
    lines += _table_notes(config, groups)
    lines += _warnings(config, results, n_train)
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


MIN_SPAN = 0.05  # the y axis spans at least +-5% of the baseline value: small differences look small


def _plot(groups: list[dict[str, Any]], results: list[dict[str, Any]], path: Path) -> None:
    """Each metric's change from the alpha-0 baseline, with the seed spread as the interval and the zero line:
    a difference inside the interval is visibly not one. Metrics without a value are marked n/a, not dropped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in METRICS if m[0] != "heldout_rep_3" and m[0] != "heldout_rep_4"]
    columns = 3
    rows = math.ceil(len(shown) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows))
    noises = sorted({g["noise"] for g in groups if g["alpha"] != 0}) or ["none"]
    baseline = next((g for g in groups if g["alpha"] == 0), None)
    for axis, (key, label, _) in zip(axes.flat, shown, strict=False):
        base = baseline[key]["mean"] if baseline is not None else 0.0
        base = 0.0 if math.isnan(base) else base
        base_std = baseline[key]["std"] if baseline is not None and baseline[key]["n"] > 1 else 0.0
        reach = MIN_SPAN * (abs(base) or 1.0)
        for noise in noises:
            keep = [g for g in groups if g["noise"] in (noise, "none") and g[key]["n"] > 0]
            deltas = [g[key]["mean"] - base for g in keep]
            spreads = [(g[key]["std"] if g[key]["n"] > 1 else 0.0) + base_std for g in keep]
            axis.errorbar([g["alpha"] for g in keep], deltas, yerr=spreads, marker="o", capsize=3, label=noise)
            points = [r for r in results if r["noise"] in (noise, "none") and r.get(key) == r.get(key)]
            axis.scatter([r["alpha"] for r in points], [r[key] - base for r in points], s=8, alpha=0.4)
            reach = max([reach, *(abs(d) + e for d, e in zip(deltas, spreads, strict=True))])
        for group in groups:
            if group[key]["n"] == 0:
                axis.annotate("n/a", (group["alpha"], 0.0), ha="center", va="bottom", fontsize=8, color="gray")
        axis.axhline(0.0, color="gray", linestyle="--", linewidth=0.8)
        alphas = [g["alpha"] for g in groups]
        margin = 0.08 * ((max(alphas) - min(alphas)) or 1.0)
        axis.set_xlim(min(alphas) - margin, max(alphas) + margin)  # keeps the n/a marks in view
        axis.set_ylim(-1.15 * reach, 1.15 * reach)
        reference = f"change vs alpha 0 ({base:.3g})" if baseline is not None else "value"
        if key == "heldout_log_diversity" and base >= SATURATED_LOG_DIVERSITY - 1e-9:
            reference += ", saturated"
        axis.set_title(f"{label}: {reference}", fontsize=9)
        axis.set_xlabel("alpha", fontsize=8)
    for axis in list(axes.flat)[len(shown) :]:
        axis.axis("off")
    if len(noises) > 1:
        axes.flat[0].legend(fontsize=7)
    several = any(g["clean_train_loss"]["n"] > 1 for g in groups)
    figure.suptitle(
        "bars: seed spread (std at this alpha + std at alpha 0)" if several else "1 seed per cell: no spread to show",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(
    config: Any, results: list[dict[str, Any]], n_train: int, n_heldout: int, prompt_format: str | None = None
) -> dict[str, Any]:
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
    (out / "report.md").write_text(_markdown(config, groups, results, n_train, n_heldout, prompt_format))
    _plot(groups, results, out / "metrics.png")
    return summary
