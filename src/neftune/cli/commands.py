"""The `neftune` command line: `main`, the top-level parser, and the `demo`, `sweep` and `report` commands.

`neftune run` (run_command.py) and `neftune sft` (sft.py) parse their own arguments: `run` hands everything after
`--` to the target, `sft` reads TRL's `SFTConfig` options with `HfArgumentParser`. The noise flags of `demo` and
`run` (`--alpha`, `--scaling`, `--noise`, ...) are made from `neftune.options` by `add_option_argument`.

Errors of `demo`, `sweep`, `report` and `sft` are one line on stderr, `neftune <command>: error: ...`, with exit
status 2; `neftune --debug <command>` (or `NEFTUNE_DEBUG=1`) also prints the traceback. Each of them checks its
extras before any work. `neftune run` is not guarded, so the target's own errors keep their tracebacks; its usage
errors are one line too.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

from ..config import NEFTuneConfig
from ..noise import NOISE_KINDS
from ..options import ALPHA, NOISE_OPTIONS, Option
from .support import (
    OneLineParser,
    comma_separated,
    debug_requested,
    require_modules,
    run_guarded,
    version_text,
)

# The modules each command imports, checked before it does any work, and the extra that brings them.
_TRAINING = ("transformers", "tokenizers", "trl", "datasets", "accelerate", "peft")
COMMAND_NEEDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "demo": (("transformers",), ("transformers",)),
    "sweep": ((*_TRAINING, "rouge_score", "sacrebleu", "matplotlib", "tqdm"), ("eval",)),
    "report": (("matplotlib",), ("eval",)),
    "sft": (("transformers", "trl", "datasets", "accelerate"), ("trl",)),
}
TOY_MODEL = "toy"  # `--model toy`: the built-in tiny Llama


def require_command_extras(command: str, extra_modules: Sequence[str] = (), extra_extras: Sequence[str] = ()) -> None:
    modules, extras = COMMAND_NEEDS[command]
    require_modules(f"neftune {command}", [*modules, *extra_modules], [*extras, *extra_extras])


def option_dest(option: Option[Any]) -> str:
    """The namespace attribute of an option's flag: its name, but `noise_seed` for `--noise-seed` (the demo's
    `--seed` is the training seed)."""
    return option.name if option.value_type is bool else option.flag.removeprefix("--").replace("-", "_")


def add_option_argument(parser: argparse.ArgumentParser, option: Option[Any], **overrides: Any) -> None:
    """`option.flag` with the option's type, default, choices and help; `overrides` replace any of them."""
    help_text = option.help.replace("%", "%%")  # argparse formats help with %
    settings: dict[str, Any] = {"dest": option_dest(option)}
    if option.value_type is bool:  # a switch away from the default
        settings["action"] = "store_false" if option.default else "store_true"
        settings["help"] = f"set {option.name} to {not option.default}. {help_text}"
    else:
        settings.update(type=option.value_type, default=option.default, help=f"{help_text} (default: %(default)s)")
        if option.choices:
            settings["choices"] = option.choices
    parser.add_argument(option.flag, **{**settings, **overrides})


def add_noise_arguments(parser: argparse.ArgumentParser) -> None:
    """The `NEFTuneConfig` options other than alpha (whose default differs per command), for `demo` and `run`."""
    for option in NOISE_OPTIONS:
        if option is not ALPHA:
            add_option_argument(parser, option)


def config_from_arguments(args: argparse.Namespace) -> NEFTuneConfig:
    return NEFTuneConfig(**{option.name: getattr(args, option_dest(option)) for option in NOISE_OPTIONS})


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="neftune",
        description="NEFTune noisy embedding fine-tuning tools. Errors are one line; `neftune --debug <command>` "
        "(or NEFTUNE_DEBUG=1) also prints the traceback.",
    )
    parser.add_argument("--version", action="version", version=version_text())
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error (before the command)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{demo,sweep,report,run,sft}")
    demo = commands.add_parser("demo", help="fine-tune a tiny model for a few steps with NEFTune (no downloads)")
    add_option_argument(demo, ALPHA)
    add_noise_arguments(demo)
    demo.add_argument("--steps", type=int, default=30, help="training steps (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    add_sweep_parser(commands)
    report = commands.add_parser(
        "report", help="rebuild results.json, report.md and metrics.png of a sweep directory (no training)"
    )
    report.add_argument("directory", help="the --output-dir of a `neftune sweep` run")
    commands.add_parser(
        "run",
        help="run a training script or -m module with neftune in place of transformers' neftune_noise_alpha hook "
        "(see `neftune run --help`)",
        add_help=False,
    )
    commands.add_parser(
        "sft",
        help="one SFT run with NEFTune: TRL's SFTConfig options plus neftune's (see `neftune sft --help`)",
        add_help=False,
    )
    return parser


_floats = comma_separated(float, "0,5,10,15")
_ints = comma_separated(int, "0,1,2")


def _words(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(","))


def add_sweep_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from ..sweep.data import PROMPT_FORMATS
    from ..sweep.runner import SweepConfig

    defaults = SweepConfig()
    sweep = commands.add_parser(
        "sweep",
        help="train one model per (alpha, seed) and measure the paper's signatures (no arguments: embedded default)",
        description="With no --model and --dataset, runs on an embedded tiny model and data made in code (no "
        "downloads). Re-running the same command resumes: finished cells are skipped. Every option is checked "
        "before anything is written or trained.",
    )
    sweep.add_argument(
        "--model",
        default=None,
        help=f"hub id, local directory, or a .gguf file (default: {TOY_MODEL}, the embedded one)",
    )
    sweep.add_argument("--dataset", default=None, help="hub id, or a local .json/.jsonl (Alpaca, Dolly or messages)")
    sweep.add_argument("--output-dir", default=defaults.output_dir)
    valued = (  # flag, parser, default, help
        ("--alphas", _floats, defaults.alphas, "comma-separated (default: 0,5,10,15)"),
        ("--seeds", _ints, defaults.seeds, "comma-separated (default: 0)"),
        (
            "--noises",
            _words,
            defaults.noises,
            f"noise kinds to compare, comma-separated: {','.join(NOISE_KINDS)} (default: uniform)",
        ),
        (
            "--scalings",
            _words,
            defaults.scalings,
            "what L is, comma-separated: per_sequence (neftune), padded (transformers' hook); default: per_sequence",
        ),
        (
            "--margin",
            float,
            defaults.margin,
            "non-inferiority margin of the held-out loss in nats, fixed before the run (default: %(default)s)",
        ),
        (
            "--noisy-loss-draws",
            int,
            defaults.noisy_loss_draws,
            "noise draws averaged in the noisy training loss (default: %(default)s)",
        ),
        ("--eval-batch-size", int, defaults.eval_batch_size, "generation and loss batch size"),
        ("--time-budget", float, None, "seconds after which no new cell starts (rerun to continue)"),
    )
    for flag, parse, default, text in valued:
        sweep.add_argument(flag, type=parse, default=default, help=text)
    sweep.add_argument(
        "--packing", action="store_true", help="train with TRL packing (best-fit decreasing, padding-free rows)"
    )
    sweep.add_argument("--finetune", choices=["full", "lora"], default=defaults.finetune)
    sweep.add_argument("--lora-r", type=int, default=defaults.lora_r)
    sweep.add_argument("--steps", type=int, default=None, help=f"training steps (default: {defaults.steps})")
    sweep.add_argument("--epochs", type=float, default=None, help="training epochs instead of steps")
    sweep.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="default by model kind: 2e-3 for the embedded toy, 2e-4 for LoRA and 2e-5 for full fine-tuning of a "
        "pretrained model",
    )
    sweep.add_argument("--batch-size", type=int, default=defaults.batch_size)
    sweep.add_argument("--gradient-accumulation", type=int, default=defaults.gradient_accumulation)
    sweep.add_argument("--max-length", type=int, default=defaults.max_length)
    sweep.add_argument("--max-train-examples", type=int, default=None)
    sweep.add_argument("--heldout", type=int, default=defaults.heldout, help="held-out examples")
    sweep.add_argument("--eval-prompts", type=int, default=defaults.eval_prompts)
    sweep.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    sweep.add_argument("--prefix-words", type=int, default=defaults.prefix_words, help="diversity prefix length")
    sweep.add_argument(
        "--prompt-format",
        choices=PROMPT_FORMATS,
        default=defaults.prompt_format,
        help="alpaca: the paper's Alpaca template; chat: the tokenizer's chat template; auto (default): chat when "
        "the model's tokenizer has one, else alpaca (the embedded toy: alpaca)",
    )


def run_sweep_command(args: argparse.Namespace) -> int:
    model = None if args.model == TOY_MODEL else args.model
    gguf = ("gguf",) if model and model.endswith(".gguf") else ()
    require_command_extras("sweep", gguf)
    from ..sweep import SweepConfig, run_sweep

    steps = args.steps if args.steps is not None else (None if args.epochs else SweepConfig().steps)
    fields = {field.name for field in dataclasses.fields(SweepConfig)}
    flags = {name: value for name, value in vars(args).items() if name in fields}  # every flag's dest is a field
    config = SweepConfig(**{**flags, "model": model, "steps": steps})
    summary = run_sweep(config)
    print(f"wrote {config.output_dir}/results.json, report.md and metrics.png ({len(summary['cells'])} cells)")
    return 0


def run_report_command(args: argparse.Namespace) -> int:
    require_command_extras("report")
    from ..sweep import rebuild_report

    summary = rebuild_report(args.directory)
    print(f"wrote {args.directory}/results.json, report.md and metrics.png ({len(summary['cells'])} cells)")
    return 0


def run_demo_command(args: argparse.Namespace) -> int:
    config = config_from_arguments(args)  # validates alpha and the options before the imports below
    require_command_extras("demo")
    from .demo import print_demo, run_demo

    print_demo(run_demo(config, steps=args.steps, seed=args.seed), config)
    return 0


def _dispatch(argv: list[str]) -> int:
    if argv[:1] == ["sft"]:  # TRL-style options are parsed by HfArgumentParser, not argparse
        require_command_extras("sft")
        from .sft import main as sft_main

        sft_main(argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    if args.command == "sweep":
        return run_sweep_command(args)
    if args.command == "report":
        return run_report_command(args)
    return run_demo_command(args)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["run"]:  # the target's own errors keep their tracebacks: not guarded
        from .run_command import main as run_main

        return run_main(arguments[1:])
    debug = debug_requested(arguments)
    command = arguments[0] if arguments and not arguments[0].startswith("-") else None
    prog = f"neftune {command}" if command in ("demo", "sweep", "report", "sft") else "neftune"
    return run_guarded(prog, lambda: _dispatch(arguments), debug)
