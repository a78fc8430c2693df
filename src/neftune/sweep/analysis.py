"""The sweep's comparisons: every noised configuration against the alpha-0 baseline, paired by seed, and
neftune's per-sequence noise against transformers' padded noise at the same alpha (see `verdicts`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .store import DEFAULT_SCALING
from .verdicts import DEFAULT_MARGIN, SIGNATURES, PairedData, Signature, compare_family

# metric -> (split, per-example field in outputs.jsonl, weight field or None)
PER_EXAMPLE: dict[str, tuple[str, str, str | None]] = {
    "clean_train_loss": ("train", "clean_loss", "tokens"),
    "heldout_loss": ("heldout", "clean_loss", "tokens"),
    "train_rouge_l": ("train", "rouge_l", None),
    "train_bleu": ("train", "bleu", None),
    "heldout_length_chars": ("heldout", "length_chars", None),
}

Outputs = dict[str, list[dict[str, Any]] | None]  # cell name -> its outputs.jsonl rows (None: not saved)


def scaling_of(cell: dict[str, Any]) -> str:
    """The cell's scaling; cells of sweeps older than the scaling axis were per-sequence."""
    return str(cell.get("scaling", "none" if cell["alpha"] == 0 else DEFAULT_SCALING))


def _per_example(
    metric: str, pairs: Sequence[tuple[str, str]], outputs: Outputs
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(seeds, examples) differences of one metric over the examples both cells of every pair evaluated."""
    split, field, weight_field = PER_EXAMPLE[metric]
    rows, weights = [], None
    for treated, control in pairs:
        a, b = outputs.get(treated), outputs.get(control)
        if a is None or b is None:
            return None, None
        values_a = {r["id"]: r for r in a if r["split"] == split and r.get(field) is not None}
        values_b = {r["id"]: r for r in b if r["split"] == split and r.get(field) is not None}
        ids = sorted(set(values_a) & set(values_b))
        if not ids:
            return None, None
        rows.append([values_a[i][field] - values_b[i][field] for i in ids])
        if weight_field is not None:
            weights = np.array([values_b[i][weight_field] for i in ids], dtype=float)
    if len({len(row) for row in rows}) != 1:
        return None, None
    return np.array(rows, dtype=float), weights


def _family(
    signatures: Sequence[Signature],
    treated: dict[int, dict[str, Any]],
    control: dict[int, dict[str, Any]],
    outputs: Outputs,
    margin: float,
) -> list[dict[str, Any]]:
    seeds = sorted(set(treated) & set(control))
    names = [(treated[s]["_name"], control[s]["_name"]) for s in seeds]
    family = []
    for signature in signatures:
        diffs = [float(treated[s][signature.metric]) - float(control[s][signature.metric]) for s in seeds]
        per_example, weights = _per_example(signature.metric, names, outputs)
        family.append(PairedData(signature, diffs, per_example, weights))
    return compare_family(family, margin=margin)


def comparisons(
    cells: Sequence[dict[str, Any]], outputs: Outputs, *, packing: bool = False, margin: float = DEFAULT_MARGIN
) -> list[dict[str, Any]]:
    """One row per (configuration, signature); cells carry `_name` (their cell name) for the outputs lookup."""
    baseline = {c["seed"]: c for c in cells if c["alpha"] == 0}
    configurations = sorted(
        {(c["noise"], c["alpha"], scaling_of(c)) for c in cells if c["alpha"] != 0}, key=lambda k: (k[1], k[0], k[2])
    )
    rows: list[dict[str, Any]] = []
    by_config: dict[tuple[str, float, str], dict[int, dict[str, Any]]] = {}
    for noise, alpha, scaling in configurations:
        treated = {c["seed"]: c for c in cells if (c["noise"], c["alpha"], scaling_of(c)) == (noise, alpha, scaling)}
        by_config[(noise, alpha, scaling)] = treated
        if not baseline:
            continue
        for row in _family(SIGNATURES, treated, baseline, outputs, margin):
            against = {"noise": noise, "alpha": alpha, "scaling": scaling, "packing": packing, "against": "alpha 0"}
            rows.append(against | row)
    directional = [s for s in SIGNATURES if not s.non_inferiority]
    for noise, alpha, scaling in configurations:
        if scaling != "per_sequence" or (noise, alpha, "padded") not in by_config:
            continue
        contrast = [Signature(f"per_sequence vs padded: {s.name}", s.metric, s.direction) for s in directional]
        family = _family(
            contrast, by_config[(noise, alpha, scaling)], by_config[(noise, alpha, "padded")], outputs, margin
        )
        for row in family:
            fields = {
                "noise": noise,
                "alpha": alpha,
                "scaling": "per_sequence",
                "packing": packing,
                "against": "padded",
            }
            rows.append(fields | row)
    return rows
