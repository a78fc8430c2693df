"""The `neftune` command line: `main` dispatches to one module per command (demo, sweep, report, sft, run)."""

from .commands import main

__all__ = ["main"]
