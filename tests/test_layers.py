"""The layers of README's "How the code is laid out": the core never imports an integration or a tool."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "neftune"
UPPER = ("integrations", "eval", "sweep", "cli")
# The package entry points and the kept aliases of old import paths re-export the upper layers on purpose.
ENTRY_POINTS = {"__init__.py", "__main__.py", "trl.py", "callback.py"}
CORE = sorted(
    path for path in [*PACKAGE.glob("*.py"), *(PACKAGE / "kernels").glob("*.py")] if path.name not in ENTRY_POINTS
)


def _imported_packages(source: str, depth: int) -> set[str]:
    """The first component below `neftune` of every module `source` imports (relative or absolute), for a file
    `depth` folders below the package root (0 for the root, 1 for kernels/)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # `from .x import` / `from ..x import`, relative to the file's package
                parts = (node.module or "").split(".")
                up = node.level - 1
                if up > depth:
                    continue
                found.add(parts[0] if up == depth else "kernels")
            elif (node.module or "").startswith("neftune."):
                found.add(node.module.split(".")[1])  # type: ignore[union-attr]
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("neftune.")}
    return found


def test_the_core_is_found() -> None:
    names = {path.name for path in CORE}
    assert {"apply.py", "hook.py", "options.py", "monitor.py", "model_families.py", "triton_noise.py"} <= names


@pytest.mark.parametrize("path", CORE, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_core_module_imports_no_integration_or_tool(path: Path) -> None:
    depth = len(path.relative_to(PACKAGE).parts) - 1
    assert not _imported_packages(path.read_text(), depth) & set(UPPER)


def test_the_check_sees_relative_and_absolute_imports() -> None:
    source = "from .integrations import callback\nimport neftune.sweep.runner\nfrom .noise import NOISES\n"
    assert _imported_packages(source, 0) == {"integrations", "sweep", "noise"}
    assert _imported_packages("from ..cli import main\nfrom . import triton_noise\n", 1) == {"cli", "kernels"}
