"""`neftune run [options] -- TARGET ...`: run a training script or module with `patch_transformers()` applied.

Like `coverage run`, the target runs in this process with `sys.argv` set as if it had been started directly, so

    neftune run -- -m llamafactory.cli train cfg.yaml
    neftune run --alpha 5 -- -m axolotl.cli.train cfg.yml
    torchrun --nproc_per_node 8 -m neftune run -- train.py --lr 2e-5

work unchanged. With no `--alpha`, each trainer's own `neftune_noise_alpha` is honoured (and those without one
train without NEFTune); with `--alpha`, every trainer gets that noise.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ..config import NEFTuneConfig


def build_parser() -> argparse.ArgumentParser:
    from .commands import add_noise_arguments

    parser = argparse.ArgumentParser(
        prog="neftune run",
        description="Run a training script or module (-m NAME) with neftune's NEFTune in place of transformers' "
        "neftune_noise_alpha hook. Everything after -- is the target and its arguments.",
        usage="neftune run [--alpha A] [options] -- (SCRIPT | -m MODULE) [ARGS ...]",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="noise alpha for every trainer; default: each trainer's own neftune_noise_alpha",
    )
    add_noise_arguments(parser)
    parser.add_argument("--clean-loss-steps", type=int, default=None, help="log neftune/clean_train_loss this often")
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

    own, target = split_target(argv)
    options = build_parser().parse_args(own)
    config = None
    if options.alpha is not None:
        config = NEFTuneConfig(
            alpha=options.alpha,
            scaling=options.scaling,
            noise=options.noise,
            schedule=options.schedule,
            schedule_warmup=options.schedule_warmup,
            seed=options.noise_seed,
            noise_decoder_inputs=options.noise_decoder_inputs,
        )
    patch_transformers(config, clean_loss_steps=options.clean_loss_steps)
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
