"""Which directories a sweep may write into: a new or empty one, or one of its own sweeps with the same settings.

Checked before anything is written, so a failed start never blocks its retry, and an unrelated directory (a model
directory, a project folder) is never overwritten.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import NEFTuneError

CONFIG_NAME = "config.json"
# Keys every sweep config.json has had; a model's config.json (model_type, architectures, ...) has none of them.
_SWEEP_KEYS = {"finetune", "learning_rate", "max_new_tokens", "prefix_words"}
# Settings older sweeps stored that no cell ever depended on: a sweep saved with them resumes without them.
_RETIRED_KEYS = {"extra"}


def _shown(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def differing_settings(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """`name: <stored> there, <wanted> now` for every setting that differs (missing ones included)."""
    lines = []
    for name in sorted(set(stored) | set(wanted)):
        if stored.get(name, "<unset>") != wanted.get(name, "<unset>"):
            lines.append(
                f"{name} {_shown(stored.get(name, '<unset>'))} there, {_shown(wanted.get(name, '<unset>'))} now"
            )
    return lines


def check_output_dir(out: Path, signature: dict[str, Any]) -> bool:
    """Raise `NEFTuneError` unless the sweep may write into `out`; True when it resumes a sweep found there.

    Creates nothing."""
    if out.exists() and not out.is_dir():
        raise NEFTuneError(f"--output-dir {str(out)!r} is a file, not a directory; pass a new or empty directory")
    if not out.exists() or not any(out.iterdir()):
        return False
    config_path = out / CONFIG_NAME
    if not config_path.is_file():
        raise NEFTuneError(
            f"{str(out)!r} is not empty and is not a sweep directory (no {CONFIG_NAME}): a sweep would overwrite "
            "files there; pass a new or empty --output-dir"
        )
    try:
        stored = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise NEFTuneError(
            f"{str(config_path)!r} is not valid JSON ({error}); it is not a sweep's: delete it to start this sweep "
            "there anew, or pass another --output-dir"
        ) from None
    if not isinstance(stored, dict) or not _SWEEP_KEYS <= set(stored):
        found = sorted(stored)[:4] if isinstance(stored, dict) else type(stored).__name__
        raise NEFTuneError(
            f"{str(out)!r} is not a sweep directory: its {CONFIG_NAME} holds no sweep settings (found {found}; a "
            "model's config?); pass a new or empty --output-dir"
        )
    stored = {name: value for name, value in stored.items() if name not in _RETIRED_KEYS}
    wanted = json.loads(json.dumps(signature))
    differences = differing_settings(stored, wanted)
    if differences:
        raise NEFTuneError(
            f"{str(out)!r} holds a sweep with other settings ({'; '.join(differences)}); rerun with its settings to "
            "resume it, or pass another --output-dir to start anew"
        )
    return True
