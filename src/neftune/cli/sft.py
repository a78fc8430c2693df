"""`neftune sft`: one SFT run with NEFTune from the command line, for users who do not write scripts.

Every `trl.SFTConfig` option (`--learning_rate`, `--max_steps`, `--packing`, ...) plus neftune's
(`--neftune_noise_alpha`, `--neftune_scaling`, `--neftune_noise`, ...) and the model/data options below.
`--model` is required; `--model toy` trains the built-in tiny Llama (a smoke test, no download).
"""

from __future__ import annotations

import argparse
import difflib
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from ..integrations.sft_trainer import SFTConfig
from ..options import FIELD_OPTIONS
from ..sweep.data import PROMPT_FORMATS
from .support import CLIError, require_modules, show_neftune_log

PROG = "neftune sft"
USAGE = (
    "neftune sft --model MODEL [--dataset DATASET] [--lora true] [--prompt_format {auto,alpaca,chat}]\n"
    "                   [--output_dir DIR] [neftune options] [TRL SFTConfig options]"
)
TOY = "toy"


@dataclass
class SFTRunArguments:
    _argument_group_name = "model and data"

    model: str | None = field(
        default=None,
        metadata={"help": "Required. Hub id, local directory or .gguf file; `toy` for the built-in tiny Llama."},
    )
    dataset: str | None = field(
        default=None,
        metadata={"help": "Hub id or local .json/.jsonl (Alpaca, Dolly or messages). Default: embedded data."},
    )
    lora: bool = field(default=False, metadata={"help": "Train a LoRA adapter instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    max_train_examples: int | None = field(default=None, metadata={"help": "Use at most this many examples."})
    prompt_format: str = field(
        default="auto",
        metadata={
            "help": "alpaca: the paper's Alpaca template; chat: the tokenizer's chat template; auto: chat when the "
            "tokenizer has one, else alpaca (the toy: alpaca).",
            "choices": list(PROMPT_FORMATS),
        },
    )


def build_parser() -> Any:
    """HfArgumentParser with one-line errors, headed `usage: neftune sft`, neftune's options before TRL's."""
    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise CLIError(f"{message}; see `{PROG} --help`", prog=PROG)

    parser = Parser(
        (SFTRunArguments, SFTConfig),  # type: ignore[arg-type]
        prog=PROG,
        usage=USAGE,
        description="One SFT run with NEFTune (neftune.SFTTrainer). NEFTune is on with alpha 5 unless "
        "--neftune_noise_alpha says otherwise.",
    )
    # argparse prints groups in list order: model and data, then NEFTune, then everything TRL/transformers adds.
    general = parser._optionals
    general.title = "TRL SFTConfig / transformers TrainingArguments options"
    neftune = parser.add_argument_group("NEFTune options (neftune.SFTConfig)")
    ours = {option.field_name for option in FIELD_OPTIONS}
    for action in [a for a in general._group_actions if a.dest in ours]:
        general._group_actions.remove(action)
        neftune._group_actions.append(action)
    groups = parser._action_groups
    groups.remove(general)
    groups.append(general)
    return parser


def _unknown(remaining: list[str], parser: argparse.ArgumentParser) -> CLIError:
    flags = [option for action in parser._actions for option in action.option_strings]
    first = next((arg for arg in remaining if arg.startswith("-")), remaining[0])
    close = difflib.get_close_matches(first.split("=")[0], flags, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return CLIError(f"unrecognised argument(s) {' '.join(remaining)}{hint}; see `{PROG} --help`", prog=PROG)


def parse(argv: Sequence[str]) -> tuple[SFTRunArguments, Any]:
    """The run's arguments and its `SFTConfig`; every mistake is a `CLIError` saying what to change."""
    import torch

    arguments = list(argv)
    if not torch.cuda.is_available():  # TRL defaults to bf16, which its config refuses on CPU; the user's flags win
        arguments = ["--use_cpu", "true", "--bf16", "false", *arguments]
    parser = build_parser()
    # TRL's SFTConfig sets the deprecated `gradient_checkpointing` itself: not the user's to fix, so not shown.
    warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
    namespace_run, config, remaining = parser.parse_args_into_dataclasses(
        args=arguments, return_remaining_strings=True, look_for_args_file=False
    )
    if remaining:
        raise _unknown(remaining, parser)
    run: SFTRunArguments = namespace_run
    if run.model is None:
        raise CLIError(
            "--model is required: a hub id (e.g. Qwen/Qwen2.5-0.5B), a local directory, a .gguf file, or "
            f"`--model {TOY}` for the built-in tiny Llama (a smoke test, no download)",
            prog=PROG,
        )
    return run, config


def main(argv: Sequence[str] | None = None) -> None:
    run, config = parse(list(argv) if argv is not None else sys.argv[1:])
    model_name = None if run.model == TOY else run.model
    modules = (["peft"] if run.lora else []) + (["gguf"] if model_name and model_name.endswith(".gguf") else [])
    require_modules(PROG, modules, ["trl", *(["peft"] if run.lora else []), *(["eval"] if "gguf" in modules else [])])
    from ..integrations.sft_trainer import SFTTrainer
    from ..sweep.models import load_run_data, sft_trainer_inputs

    show_neftune_log()
    data = load_run_data(model_name, run.dataset, run.prompt_format)
    pairs = data.pairs[: run.max_train_examples] if run.max_train_examples else data.pairs
    if model_name is None:
        print(
            f"{PROG}: training the built-in TOY model (2-layer Llama, hidden 64, random init), not a pretrained "
            "one: a smoke test; pass --model <hub id, directory or .gguf> for a real run",
            file=sys.stderr,
        )
    source = run.dataset or "embedded templated instructions"
    print(f"{PROG}: data {source} ({len(pairs)} examples), prompt format {data.prompt_format}", file=sys.stderr)
    lora_rank = run.lora_r if run.lora else None
    inputs = sft_trainer_inputs(model_name, data.tokenizer, pairs, seed=config.seed, lora_rank=lora_rank)
    trainer = SFTTrainer(args=config, **inputs)
    trainer.train()
    trainer.save_model(config.output_dir)
    print(f"saved to {config.output_dir}")
