"""`neftune` command line: `neftune demo`."""

from __future__ import annotations

import argparse
import sys
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
    add_sweep_parser(commands)
    report = commands.add_parser(
        "report", help="rebuild results.json, report.md and metrics.png of a sweep directory (no training)"
    )
    report.add_argument("directory", help="the --output-dir of a `neftune sweep` run")
    commands.add_parser(
        "sft",
        help="one SFT run with NEFTune: TRL's SFTConfig options plus neftune's (see `neftune sft --help`)",
        add_help=False,
    )
    return parser


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(value) for value in text.split(","))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(value) for value in text.split(","))


def add_sweep_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from .sweep.runner import SweepConfig

    defaults = SweepConfig()
    sweep = commands.add_parser(
        "sweep",
        help="train one model per (alpha, seed) and measure the paper's signatures (no arguments: embedded default)",
        description="With no --model and --dataset, runs on an embedded tiny model and data made in code (no "
        "downloads). Re-running the same command resumes: finished cells are skipped.",
    )
    sweep.add_argument("--model", default=None, help="hub id, local directory, or a .gguf file")
    sweep.add_argument("--dataset", default=None, help="hub id, or a local .json/.jsonl (Alpaca, Dolly or messages)")
    sweep.add_argument("--output-dir", default=defaults.output_dir)
    sweep.add_argument("--alphas", type=_floats, default=defaults.alphas, help="comma-separated (default: 0,5,10,15)")
    sweep.add_argument("--seeds", type=_ints, default=defaults.seeds, help="comma-separated (default: 0)")
    sweep.add_argument(
        "--noises",
        type=lambda text: tuple(text.split(",")),
        default=defaults.noises,
        help="noise kinds to compare, comma-separated: uniform,gaussian,symmetric (default: uniform)",
    )
    sweep.add_argument(
        "--scalings",
        type=lambda text: tuple(text.split(",")),
        default=defaults.scalings,
        help="what L is, comma-separated: per_sequence (neftune), padded (transformers' hook); default: per_sequence",
    )
    sweep.add_argument(
        "--packing", action="store_true", help="train with TRL packing (best-fit decreasing, padding-free rows)"
    )
    sweep.add_argument(
        "--margin",
        type=float,
        default=defaults.margin,
        help="non-inferiority margin of the held-out loss in nats, fixed before the run (default: %(default)s)",
    )
    sweep.add_argument(
        "--noisy-loss-draws",
        type=int,
        default=defaults.noisy_loss_draws,
        help="noise draws averaged in the noisy training loss (default: %(default)s)",
    )
    sweep.add_argument(
        "--eval-batch-size", type=int, default=defaults.eval_batch_size, help="generation and loss batch size"
    )
    sweep.add_argument(
        "--time-budget", type=float, default=None, help="seconds after which no new cell starts (rerun to continue)"
    )
    sweep.add_argument("--finetune", choices=["full", "lora"], default=defaults.finetune)
    sweep.add_argument("--lora-r", type=int, default=defaults.lora_r)
    sweep.add_argument("--steps", type=int, default=None, help=f"training steps (default: {defaults.steps})")
    sweep.add_argument("--epochs", type=float, default=None, help="training epochs instead of steps")
    sweep.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    sweep.add_argument("--batch-size", type=int, default=defaults.batch_size)
    sweep.add_argument("--gradient-accumulation", type=int, default=defaults.gradient_accumulation)
    sweep.add_argument("--max-length", type=int, default=defaults.max_length)
    sweep.add_argument("--max-train-examples", type=int, default=None)
    sweep.add_argument("--heldout", type=int, default=defaults.heldout, help="held-out examples")
    sweep.add_argument("--eval-prompts", type=int, default=defaults.eval_prompts)
    sweep.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    sweep.add_argument("--prefix-words", type=int, default=defaults.prefix_words, help="diversity prefix length")


def run_sweep_command(args: argparse.Namespace) -> None:
    from .sweep import SweepConfig, run_sweep

    steps = args.steps if args.steps is not None else (None if args.epochs else SweepConfig().steps)
    config = SweepConfig(
        model=args.model,
        dataset=args.dataset,
        output_dir=args.output_dir,
        alphas=args.alphas,
        seeds=args.seeds,
        noises=args.noises,
        scalings=args.scalings,
        packing=args.packing,
        margin=args.margin,
        noisy_loss_draws=args.noisy_loss_draws,
        eval_batch_size=args.eval_batch_size,
        time_budget=args.time_budget,
        finetune=args.finetune,
        lora_r=args.lora_r,
        steps=steps,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        gradient_accumulation=args.gradient_accumulation,
        max_length=args.max_length,
        max_train_examples=args.max_train_examples,
        heldout=args.heldout,
        eval_prompts=args.eval_prompts,
        max_new_tokens=args.max_new_tokens,
        prefix_words=args.prefix_words,
    )
    summary = run_sweep(config)
    print(f"wrote {config.output_dir}/results.json, report.md and metrics.png ({len(summary['cells'])} cells)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sft"]:  # TRL-style options are parsed by HfArgumentParser, not argparse
        from .sft import main as sft_main

        sft_main(argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    if args.command == "sweep":
        run_sweep_command(args)
    if args.command == "report":
        from .sweep import rebuild_report

        summary = rebuild_report(args.directory)
        print(f"wrote {args.directory}/results.json, report.md and metrics.png ({len(summary['cells'])} cells)")
    if args.command == "demo":
        from .demo import print_demo, run_demo

        config = config_from_arguments(args)
        print_demo(run_demo(config, steps=args.steps, seed=args.seed), config)
    return 0
