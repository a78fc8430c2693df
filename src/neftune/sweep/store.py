"""Where a sweep directory keeps what it measured: one JSON per finished cell, its per-example outputs beside it.

<dir>/config.json                   everything the cells depend on (a resumed sweep must match it; see output_dir)
<dir>/sweep.json                    the full settings, axes grown over resumes (what `neftune report` reads)
<dir>/data.json, examples.jsonl     example counts, prompt format, truncation; the evaluated prompts and references
<dir>/cells/<cell>.json             the cell's metrics (written last: its presence marks the cell done)
<dir>/cells/<cell>.outputs.jsonl    one line per evaluated example: split, id, generation, losses, scores
<dir>/cells/baseline.json           the untrained model, evaluated once (and baseline.outputs.jsonl)
<dir>/results.json, report.md, metrics.png    rebuilt from the above by `neftune report <dir>`
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BASELINE = "baseline"
DEFAULT_SCALING = "per_sequence"


def cell_name(noise: str, alpha: float, seed: int, scaling: str = DEFAULT_SCALING) -> str:
    """`uniform-alpha5-seed0`; a scaling other than the default is named too (`uniform-padded-alpha5-seed0`)."""
    if alpha == 0 or scaling in (DEFAULT_SCALING, "none"):
        return f"{noise}-alpha{alpha:g}-seed{seed}"
    return f"{noise}-{scaling}-alpha{alpha:g}-seed{seed}"


def cell_path(out: Path, name: str) -> Path:
    return out / "cells" / f"{name}.json"


def outputs_path(out: Path, name: str) -> Path:
    return out / "cells" / f"{name}.outputs.jsonl"


def write_cell(out: Path, name: str, result: dict[str, Any], outputs: list[dict[str, Any]]) -> None:
    """The outputs first, the metrics last: an interrupted write leaves the cell to be redone, never half-done."""
    outputs_path(out, name).write_text("".join(json.dumps(row) + "\n" for row in outputs))
    cell_path(out, name).write_text(json.dumps(result, indent=1))


def read_cell(out: Path, name: str) -> dict[str, Any] | None:
    path = cell_path(out, name)
    return json.loads(path.read_text()) if path.exists() else None


def read_outputs(out: Path, name: str) -> list[dict[str, Any]] | None:
    path = outputs_path(out, name)
    if not path.exists():
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
