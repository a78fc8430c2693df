"""`neftune run [options] -- TARGET ...`: run a training script or module with `patch_transformers()` applied.

Like `coverage run`, the target runs in this process with `sys.argv` set as if it had been started directly, so

    neftune run -- -m llamafactory.cli train cfg.yaml
    neftune run --alpha 5 -- -m axolotl.cli.train cfg.yml
    torchrun --nproc_per_node 8 -m neftune run -- train.py --lr 2e-5

work unchanged. With no `--alpha`, each trainer's own `neftune_noise_alpha` is honoured (and those without one
train without NEFTune); with `--alpha`, every trainer gets that noise, shaped by the other noise flags (which
therefore need `--alpha`).
"""

from __future__ import annotations

import argparse
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ..options import ALPHA, CLEAN_LOSS_STEPS, NOISE_OPTIONS


def build_parser() -> argparse.ArgumentParser:
    from .commands import add_noise_arguments, add_option_argument

    parser = argparse.ArgumentParser(
        prog="neftune run",
        description="Run a training script or module (-m NAME) with neftune's NEFTune in place of transformers' "
        "neftune_noise_alpha hook. Everything after -- is the target and its arguments.",
        usage="neftune run [--alpha A] [options] -- (SCRIPT | -m MODULE) [ARGS ...]",
    )
    alpha_help = "noise alpha for every trainer; default: each trainer's own neftune_noise_alpha"
    add_option_argument(parser, ALPHA, default=None, help=alpha_help)
    add_noise_arguments(parser)
    add_option_argument(parser, CLEAN_LOSS_STEPS)
    return parser


def split_target(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(neftune's own arguments, the target and its arguments), split at the first `--`."""
    argv = list(argv)
    if "--" not in argv and ("-h" in argv or "--help" in argv):
        build_parser().parse_args(["--help"])  # prints the help and exits 0
    if "--" not in argv:
        _usage_error("put the target after --, e.g. neftune run --alpha 5 -- train.py --lr 2e-5")
    index = argv.index("--")
    own, target = argv[:index], argv[index + 1 :]
    if not target or target == ["-m"]:
        _usage_error("no target after --; give a script path or -m MODULE")
    return own, target


def _usage_error(message: str) -> NoReturn:
    print(f"neftune run: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Sequence[str]) -> int:
    from ..integrations.transformers_patch import patch_transformers, unpatch_transformers
    from .commands import config_from_arguments, option_dest

    own, target = split_target(argv)
    options = build_parser().parse_args(own)
    if options.alpha is None:  # each trainer's own alpha with the default noise: other noise flags would be lost
        given = [o.flag for o in NOISE_OPTIONS if o is not ALPHA and getattr(options, option_dest(o)) != o.default]
        if given:
            _usage_error(
                f"{' '.join(given)} without --alpha: the noise flags set the noise of every trainer, so give --alpha "
                "A too (without it each trainer keeps its own neftune_noise_alpha and the default noise)"
            )
    config = None if options.alpha is None else config_from_arguments(options)
    clean_loss_steps = CLEAN_LOSS_STEPS.validate(options.clean_loss_steps, CLEAN_LOSS_STEPS.flag)
    patch_transformers(config, clean_loss_steps=clean_loss_steps)
    saved_argv = sys.argv
    try:
        if target[0] == "-m":
            sys.argv = [target[1], *target[2:]]
            runpy.run_module(target[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(target)
            sys.path.insert(0, str(Path(target[0]).resolve().parent))  # as `python SCRIPT` puts it first
            runpy.run_path(target[0], run_name="__main__")
    finally:
        sys.argv = saved_argv
        unpatch_transformers()
    return 0
