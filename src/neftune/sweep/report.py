"""results.json, report.md and metrics.png of a sweep directory: every metric against alpha with the spread over
seeds, the untrained baseline, the paired comparisons with their verdicts, and warnings about runs whose numbers
are not NEFTune's effect. Rebuilt from the cell files alone,
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

    if not directory.is_dir():
        raise NEFTuneError(
            f"sweep directory {str(directory)!r} does not exist; pass the --output-dir of a `neftune sweep` run"
        )
    settings_path = directory / "sweep.json"
    results_path = directory / "results.json"
    if settings_path.exists():
        settings = json.loads(settings_path.read_text())
    elif results_path.exists():  # sweeps from before sweep.json: results.json carries the settings
        settings = dict(json.loads(results_path.read_text())["config"])
    else:
        raise NEFTuneError(
            f"{str(directory)!r} is not a sweep directory (no sweep.json or results.json); pass the --output-dir of a "
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


def _signed(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.{digits}f}"


SATURATED_LOG_DIVERSITY = 20.0  # -log(e^-20): no n-gram repeats at all within the prefix


def _saturated(key: str, value: Any) -> bool:
    return (
        key == "heldout_log_diversity" and isinstance(value, (int, float)) and value >= SATURATED_LOG_DIVERSITY - 1e-9
    )


def _cell(key: str, stat: dict[str, float]) -> str:
    """`mean ± std`; `n/a` where no output was long enough; no `± 0.000` for a single seed."""
    if stat["n"] == 0:
        return "n/a"
    if _saturated(key, stat["mean"]):
        return "20 (saturated)"
    if stat["n"] == 1:
        return f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def _single(key: str, value: Any) -> str:
    """One value (the untrained row) shown as `_cell` shows a group."""
    finite = isinstance(value, (int, float)) and not math.isnan(value)
    return _cell(key, {"mean": float(value) if finite else math.nan, "std": 0.0, "n": 1 if finite else 0})


def _table_notes(config: Any, groups: list[dict[str, Any]]) -> list[str]:
    notes = []
    if any(g[key]["n"] == 0 for g in groups for key, _, _ in METRICS):
        notes.append(
            f"n/a: no held-out output reached the {config.prefix_words}-word diversity prefix (shorter outputs are "
            "dropped); lower --prefix-words or raise --max-new-tokens."
        )
    if any(_saturated("heldout_log_diversity", g["heldout_log_diversity"]["mean"]) for g in groups):
        notes.append(
            f"log-diversity 20 (saturated): no output repeats a 2-, 3- or 4-gram within its first "
            f"{config.prefix_words} words, so the metric is at its ceiling and cannot show a change; use a longer "
            "--prefix-words and --max-new-tokens."
        )
    return ["", *notes] if notes else []


DEGENERATE_SHARE = 0.5  # a cell whose held-out outputs are mostly empty, looping or identical
LOSS_ROSE_BY = 0.02  # relative rise of the logged training loss from first to last log that is flagged
SMALL_DATA_SHARE = 0.5  # a run that sees less than half of the training examples is flagged


def _warnings(config: Any, cells: list[dict[str, Any]], n_train: int | None) -> list[str]:
    """Runs whose numbers should not be read as NEFTune's effect: a rising loss, degenerate outputs, little data."""
    lines = []
    for row in cells:
        name = f"{row['noise']}, alpha {row['alpha']:g}, seed {row['seed']}"
        if scaling_of(row) not in ("per_sequence", "none"):
            name = f"{row['noise']} {scaling_of(row)}, alpha {row['alpha']:g}, seed {row['seed']}"
        # the last logged (noisy) training loss; sweeps from before the like-with-like losses logged it as noisy
        first = row.get("first_train_loss", math.nan)
        last = row.get("logged_train_loss", row.get("noisy_train_loss", math.nan))
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
    # with packing a step's rows hold several examples each, so steps x batch does not count examples
    if config.steps and n_train and not config.packing:
        seen = config.steps * config.batch_size * config.gradient_accumulation
        if seen < SMALL_DATA_SHARE * n_train:
            lines.append(
                f"- Each run saw at most {seen} of the {n_train} training examples ({seen / n_train:.1%}): the sweep "
                "measures a short run on a small part of the data; raise --steps or set --max-train-examples."
            )
    return ["", "## Warnings", "", *lines] if lines else []


def _diversity_line(groups: list[dict[str, Any]]) -> list[str]:
    """Log-diversity is not among the tested signatures (it should stay about the same): its change, shown."""
    baseline = next((g for g in groups if g["alpha"] == 0), None)
    if baseline is None:
        return []
    several = len({(g["noise"], g["scaling"]) for g in groups if g["alpha"] != 0}) > 1
    base = baseline["heldout_log_diversity"]["mean"]
    changes = []
    for group in groups:
        if group["alpha"] == 0:
            continue
        label = f" ({group['noise']}, {group['scaling']})" if several else ""
        changes.append(f"alpha {group['alpha']:g}{label}: {_signed(group['heldout_log_diversity']['mean'] - base)}")
    if not changes:
        return []
    return ["", "Log-diversity change vs alpha 0 (should stay about the same; not tested): " + "; ".join(changes)]


def _comparison_lines(rows: list[dict[str, Any]], margin: float, seeds: int) -> list[str]:
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
        *(
            [
                "One seed per cell: there is no seed spread, so no comparison can be established; use several "
                "--seeds before drawing conclusions.",
                "",
            ]
            if seeds < 2
            else []
        ),
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
            f"| {row['signature']} | {config} | {row['n']} | {_signed(row['mean_diff'], 4)} | "
            f"[{_fmt(row['ci_low'], 4)}, {_fmt(row['ci_high'], 4)}] | {boot} | {_fmt(row['p_holm'])} | "
            f"{row['verdict']} |"
        )
    return lines


def _markdown(sweep: SweepData, groups: list[dict[str, Any]], rows: list[dict[str, Any]], pairing: str) -> str:
    config = sweep.config
    seeds = len(config.seeds)
    truncation = sweep.data.get("truncation")
    trunc_text = (
        f"{truncation['completion_tokens_trained_fraction']:.1%} of the training completion tokens fit in "
        f"max_length {config.max_length} ({truncation['examples_truncated']} of {truncation['examples']} examples cut)"
        if truncation
        else "truncation not recorded"
    )
    prompt_format = sweep.data.get("prompt_format") or f"{config.prompt_format} (not recorded)"
    lines = [
        "# NEFTune sweep report",
        "",
        f"Model: `{config.model or 'embedded tiny Llama (hidden 64, 2 layers)'}`; "
        f"data: `{config.dataset or 'embedded templated instructions'}` "
        f"({sweep.data.get('train_examples')} training, {sweep.data.get('heldout_examples')} held-out examples); "
        f"{config.finetune} fine-tuning, {config.steps or config.epochs} {'steps' if config.steps else 'epochs'}, "
        f"lr {config.learning_rate}, batch {config.batch_size}x{config.gradient_accumulation}, "
        f"max_length {config.max_length}, packing {'on (TRL bfd, padding-free)' if config.packing else 'off'}; "
        f"prompt format {prompt_format}; scalings {', '.join(config.scalings)}; {seeds} seed(s) per cell; "
        f"{trunc_text}.",
        "",
        f"Losses (nats per completion token): clean and noisy training loss on the same first "
        f"{sweep.data.get('loss_examples', 'n/a')} training examples (noisy: the cell's noise on, mean of "
        f"{config.noisy_loss_draws} draws, on the evaluation's padded batches of {config.eval_batch_size}), held-out "
        f"loss on all held-out examples. Greedy decoding with repetition penalty {config.repetition_penalty}, at "
        f"most {config.max_new_tokens} new tokens, on {config.eval_prompts} training and {config.eval_prompts} "
        "held-out prompts; ROUGE-L in [0, 1], BLEU is sacrebleu's corpus BLEU on its 0-100 scale. Diversity over "
        f"the first {config.prefix_words} words of each output (shorter outputs dropped). "
        + ("1 seed, no spread: each value is a single run." if seeds == 1 else "`mean ± std` over seeds.")
        + " `untrained` is the model before fine-tuning, evaluated once.",
        "",
        f"Pairing by seed: {pairing}.",
        "",
        "| noise | alpha | scaling | " + " | ".join(label for _, label, _ in METRICS) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in METRICS) + " |",
    ]
    if sweep.baseline is not None:
        values = [_single(key, sweep.baseline.get(key)) for key, _, _ in METRICS]
        lines.append("| untrained | - | - | " + " | ".join(values) + " |")
    for group in groups:
        cells = [_cell(key, group[key]) for key, _, _ in METRICS]
        lines.append(f"| {group['noise']} | {group['alpha']:g} | {group['scaling']} | " + " | ".join(cells) + " |")
    lines += _table_notes(config, groups)
    lines += _warnings(config, sweep.cells, sweep.data.get("train_examples"))
    lines += ["", "## The paper's signatures (section 5): paired comparisons", ""]
    lines += _comparison_lines(rows, config.margin, seeds)
    lines += _diversity_line(groups)
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


MIN_SPAN = 0.05  # the y axis spans at least +-5% of the baseline value: small differences look small


def _plot(groups: list[dict[str, Any]], sweep: SweepData, path: Path) -> None:
    """Each metric's change from the alpha-0 cells, one line per (noise, scaling), with the seed spread as the
    interval and the zero line: a difference inside the interval is visibly not one. Metrics without a value are
    marked n/a, not dropped; the untrained model's value is named in the title (drawn, it would flatten the rest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in METRICS if m[0] not in ("heldout_rep_3", "heldout_rep_4")]
    columns = 3
    rows = math.ceil(len(shown) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows))
    series = sorted({(g["noise"], g["scaling"]) for g in groups if g["alpha"] != 0}) or [("none", "none")]
    baseline = next((g for g in groups if g["alpha"] == 0), None)
    for axis, (key, label, _) in zip(axes.flat, shown, strict=False):
        base = baseline[key]["mean"] if baseline is not None else 0.0
        base = 0.0 if math.isnan(base) else base
        base_std = baseline[key]["std"] if baseline is not None and baseline[key]["n"] > 1 else 0.0
        reach = MIN_SPAN * (abs(base) or 1.0)
        for noise, scaling in series:
            members = ((noise, scaling), ("none", "none"))
            keep = [g for g in groups if (g["noise"], g["scaling"]) in members and g[key]["n"] > 0]
            deltas = [g[key]["mean"] - base for g in keep]
            spreads = [(g[key]["std"] if g[key]["n"] > 1 else 0.0) + base_std for g in keep]
            axis.errorbar(
                [g["alpha"] for g in keep], deltas, yerr=spreads, marker="o", capsize=3, label=f"{noise} {scaling}"
            )
            points = [
                r
                for r in sweep.cells
                if (r["noise"], scaling_of(r)) in members and isinstance(r.get(key), (int, float)) and r[key] == r[key]
            ]
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
        if _saturated(key, base):
            reference += ", saturated"
        untrained = sweep.baseline.get(key) if sweep.baseline is not None else None
        if isinstance(untrained, (int, float)) and untrained == untrained:
            reference += f"\nuntrained model: {untrained:.3g}"
        axis.set_title(f"{label}: {reference}", fontsize=9)
        axis.set_xlabel("alpha", fontsize=8)
    for axis in list(axes.flat)[len(shown) :]:
        axis.axis("off")
    if len(series) > 1:
        axes.flat[0].legend(fontsize=7)
    several = any(g["clean_train_loss"]["n"] > 1 for g in groups)
    figure.suptitle(
        "bars: seed spread (std at this alpha + std at alpha 0)" if several else "1 seed per cell: no spread to show",
        fontsize=9,
    )
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
