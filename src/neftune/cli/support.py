"""What every `neftune` subcommand shares: one-line errors (tracebacks only on request), a parser that reports
mistakes in one line, the extras check, and the logging setup."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ..errors import NEFTuneError

DEBUG_ENV = "NEFTUNE_DEBUG"
EXIT_USAGE = 2  # argparse's status for a usage error; every CLI error uses it
EXIT_INTERRUPTED = 130


class CLIError(Exception):
    """A mistake on the command line; the message already says how to fix it."""

    def __init__(self, message: str, prog: str | None = None) -> None:
        super().__init__(message)
        self.prog = prog


class OneLineParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line (`neftune sweep: error: ...`), not usage plus error."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message}; see `{self.prog} --help`", prog=self.prog)


def comma_separated(kind: Callable[[str], Any], example: str) -> Callable[[str], tuple[Any, ...]]:
    """An argparse `type=` for comma-separated values whose error names the bad entry and an example."""
    noun = "a whole number" if kind is int else "a number"

    def parse(text: str) -> tuple[Any, ...]:
        values = []
        for part in text.split(","):
            try:
                values.append(kind(part.strip()))
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{part.strip()!r} in {text!r} is not {noun}; give comma-separated values such as {example}"
                ) from None
        return tuple(values)

    return parse


# Which extra of pyproject.toml brings each module a command imports.
EXTRA_OF_MODULE = {
    "transformers": "transformers",
    "tokenizers": "transformers",
    "trl": "trl",
    "datasets": "trl",
    "accelerate": "trl",
    "peft": "peft",
    "rouge_score": "eval",
    "sacrebleu": "eval",
    "matplotlib": "eval",
    "tqdm": "eval",
    "gguf": "eval",
}


def require_modules(what: str, modules: Sequence[str], extras: Sequence[str]) -> None:
    """Import `modules` now, before any work, and turn a missing one into the `pip install` line to run."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        names = ", ".join(missing)
        verb = "is" if len(missing) == 1 else "are"
        raise CLIError(
            f'{what} needs {names}, which {verb} not installed; run: pip install "neftune[{",".join(extras)}]"'
        )


def debug_requested(argv: list[str]) -> bool:
    """`--debug` before the subcommand (removed from `argv`) or `NEFTUNE_DEBUG=1` in the environment."""
    debug = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    while argv and argv[0] == "--debug":
        argv.pop(0)
        debug = True
    return debug


def one_line(error: BaseException) -> str:
    """The error as one line: user errors as they are, anything else with its type and how to see the traceback."""
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, (NEFTuneError, CLIError)):
        return text
    return f"{type(error).__name__}: {text} (run `neftune --debug ...` or set {DEBUG_ENV}=1 for the traceback)"


def run_guarded(prog: str, work: Callable[[], int], debug: bool) -> int:
    """Run a subcommand: an exception becomes one line on stderr and exit status 2 (with `debug`, the traceback
    too); `--help` and `--version` exit as argparse makes them."""
    try:
        return work()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if debug:
            traceback.print_exc()
        where = error.prog if isinstance(error, CLIError) and error.prog else prog
        print(f"{where}: error: {one_line(error)}", file=sys.stderr)
        return EXIT_USAGE


class _ActivationAndWarnings(logging.Filter):
    """Lets through neftune's warnings and its once-per-run "NEFTune active: ..." line, nothing chattier."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or str(record.msg).startswith("NEFTune active")


def show_neftune_log() -> None:
    """Make the `neftune` logger's activation line and warnings visible at the default log level (idempotent)."""
    logger = logging.getLogger("neftune")
    for existing in logger.handlers:
        if getattr(existing, "_neftune_cli", False) and isinstance(existing, logging.StreamHandler):
            existing.stream = sys.stderr  # main() may run again in one process, with another stderr
            return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_ActivationAndWarnings())
    handler._neftune_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(min(logger.level or logging.INFO, logging.INFO))
    logger.propagate = False  # one copy of each line, even when the root logger has a handler


def version_text() -> str:
    """`neftune 0.1.0 (torch 2.13.0, transformers 5.24.0, trl 1.16.0)`: what a bug report needs."""
    from importlib.metadata import PackageNotFoundError, version

    from .._version import __version__

    found = []
    for name in ("torch", "transformers", "trl", "peft"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return f"neftune {__version__} ({', '.join(found)})"
