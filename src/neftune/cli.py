"""`neftune` command line: `neftune demo`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .config import SCALINGS, NEFTuneConfig
from .noise import NOISE_KINDS
from .schedule import SCHEDULES


def add_noise_arguments(parser: argparse.ArgumentParser) -> None:
    """The `NEFTuneConfig` options other than alpha, shared by every subcommand."""
    parser.add_argument("--scaling", choices=SCALINGS, default="per_sequence", help="what L is (default: %(default)s)")
    parser.add_argument("--noise", choices=NOISE_KINDS, default="uniform", help="distribution (default: %(default)s)")
    parser.add_argument(
        "--schedule", choices=SCHEDULES, default="constant", help="alpha over training (default: %(default)s)"
    )
    parser.add_argument("--schedule-warmup", type=float, default=0.0, help="warm-up fraction (default: %(default)s)")
    parser.add_argument("--noise-seed", type=int, default=None, help="seed of neftune's own noise generator")
    parser.add_argument(
        "--no-decoder-noise",
        dest="noise_decoder_inputs",
        action="store_false",
        help="encoder-decoder models: leave the decoder's inputs clean",
    )


def config_from_arguments(args: argparse.Namespace) -> NEFTuneConfig:
    return NEFTuneConfig(
        alpha=args.alpha,
        scaling=args.scaling,
        noise=args.noise,
        schedule=args.schedule,
        schedule_warmup=args.schedule_warmup,
        seed=args.noise_seed,
        noise_decoder_inputs=args.noise_decoder_inputs,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neftune", description="NEFTune noisy embedding fine-tuning tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="fine-tune a tiny model for a few steps with NEFTune (no downloads)")
    demo.add_argument("--alpha", type=float, default=5.0, help="noise magnitude (default: %(default)s)")
    add_noise_arguments(demo)
    demo.add_argument("--steps", type=int, default=30, help="training steps (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import print_demo, run_demo

        config = config_from_arguments(args)
        print_demo(run_demo(config, steps=args.steps, seed=args.seed), config)
    return 0
