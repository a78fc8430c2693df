"""`neftune` command line: `neftune demo`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neftune", description="NEFTune noisy embedding fine-tuning tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="fine-tune a tiny model for a few steps with NEFTune (no downloads)")
    demo.add_argument("--alpha", type=float, default=5.0, help="noise magnitude (default: %(default)s)")
    demo.add_argument("--steps", type=int, default=30, help="training steps (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import print_demo, run_demo

        print_demo(run_demo(alpha=args.alpha, steps=args.steps, seed=args.seed), args.alpha)
    return 0
