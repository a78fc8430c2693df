"""The alpha sweep: train every (noise, alpha, seed) cell with the drop-in SFTTrainer and measure it.

Each finished cell is written to `<output_dir>/cells/<cell>.json`; running the same command again skips them.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import validate_alpha
from ..errors import NEFTuneError
from ..noise import NOISE_KINDS
from .data import PROMPT_FORMATS, Pair, split_pairs
from .models import load_model, load_run_data
from .output_dir import CONFIG_NAME, check_output_dir


def default_learning_rate(model: str | None, finetune: str) -> float:
    """The sweep's learning rate when none is given. The toy is trained from random init and needs a large one;
    2e-3 wrecks a pretrained model under full fine-tuning (SmolLM2-135M: loss 2.64 -> 3.90 in three steps)."""
    if model is None:
        return 2e-3
    return 2e-4 if finetune == "lora" else 2e-5


@dataclass(frozen=True)
class SweepConfig:
    """What to sweep. `model=None` and `dataset=None` select the embedded defaults (no downloads).

    `learning_rate=None` picks `default_learning_rate(model, finetune)`. Every field is checked here, so a bad
    value fails before anything is written or trained.
    """

    model: str | None = None
    dataset: str | None = None
    output_dir: str = "neftune-sweep"
    alphas: tuple[float, ...] = (0.0, 5.0, 10.0, 15.0)
    seeds: tuple[int, ...] = (0,)
    noises: tuple[str, ...] = ("uniform",)
    finetune: str = "full"  # "full" or "lora"
    lora_r: int = 16
    steps: int | None = 120
    epochs: float | None = None
    learning_rate: float | None = None
    batch_size: int = 8
    gradient_accumulation: int = 1
    max_length: int = 256
    max_train_examples: int | None = None
    heldout: int = 32
    eval_prompts: int = 32
    max_new_tokens: int = 64
    repetition_penalty: float = 1.2
    prefix_words: int = 8
    prompt_format: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.finetune not in ("full", "lora"):
            raise NEFTuneError(f"finetune must be 'full' or 'lora', got {self.finetune!r}")
        if (self.steps is None) == (self.epochs is None):
            raise NEFTuneError("give exactly one of steps or epochs")
        if not self.alphas or not self.seeds or not self.noises:
            raise NEFTuneError("the sweep needs at least one alpha, one seed and one noise kind")
        object.__setattr__(self, "alphas", tuple(validate_alpha(a, name="alpha in --alphas") for a in self.alphas))
        for seed in self.seeds:
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise NEFTuneError(f"seeds must be whole numbers >= 0, got {seed!r} in --seeds; e.g. 0,1,2")
        for noise in self.noises:
            if noise not in NOISE_KINDS:
                raise NEFTuneError(f"noise {noise!r} in --noises is not one of {', '.join(NOISE_KINDS)}")
        for name, values in (("alphas", self.alphas), ("seeds", self.seeds), ("noises", self.noises)):
            if len(set(values)) != len(values):
                raise NEFTuneError(f"--{name} lists a value twice ({values!r}); give each once")
        counts = ["lora_r", "batch_size", "gradient_accumulation", "max_length", "heldout", "eval_prompts"]
        counts += ["max_new_tokens", "prefix_words", "steps", "max_train_examples"]
        for name in counts:
            if getattr(self, name) is not None:  # steps and max_train_examples may be None
                _check_count(name, getattr(self, name))
        if self.epochs is not None:
            _check_positive("epochs", self.epochs)
        _check_positive("repetition_penalty", self.repetition_penalty)
        if self.prompt_format not in PROMPT_FORMATS:
            raise NEFTuneError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {self.prompt_format!r}")
        if self.learning_rate is None:
            object.__setattr__(self, "learning_rate", default_learning_rate(self.model, self.finetune))
        _check_positive("learning_rate", self.learning_rate)

    def cells(self) -> list[tuple[str, float, int]]:
        """(noise, alpha, seed) triples; alpha 0 is one baseline shared by every noise kind."""
        return [
            (noise, alpha, seed)
            for alpha in self.alphas
            for noise in (("none",) if alpha == 0 else self.noises)
            for seed in self.seeds
        ]

    def signature(self) -> dict[str, Any]:
        """Everything a cell's result depends on, to refuse resuming into a different sweep."""
        kept = dataclasses.asdict(self)
        for name in ("output_dir", "alphas", "seeds", "noises"):
            kept.pop(name)
        return kept


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NEFTuneError(f"{name} must be a whole number >= 1, got {value!r} ({_flag(name)})")


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise NEFTuneError(f"{name} must be a positive number, got {value!r} ({_flag(name)})")


def cell_name(noise: str, alpha: float, seed: int) -> str:
    return f"{noise}-alpha{alpha:g}-seed{seed}"


def _train(config: SweepConfig, noise: str, alpha: float, seed: int, train: list[Pair], tokenizer: Any) -> Any:
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback

    from ..trl import SFTConfig, SFTTrainer

    model = load_model(config.model, tokenizer, seed)
    peft_config = None
    if config.finetune == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=config.lora_r, lora_alpha=2 * config.lora_r, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    on_gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as scratch:
        args = SFTConfig(
            output_dir=scratch,
            max_steps=config.steps if config.steps is not None else -1,
            num_train_epochs=config.epochs or 1.0,
            per_device_train_batch_size=config.batch_size,
            gradient_accumulation_steps=config.gradient_accumulation,
            learning_rate=config.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, (config.steps or 10) // 10),
            logging_steps=max(1, (config.steps or 50) // 10),
            max_length=config.max_length,
            save_strategy="no",
            report_to=[],
            seed=seed,
            use_cpu=not on_gpu,
            bf16=on_gpu,
            disable_tqdm=True,
            neftune_noise_alpha=alpha,
            neftune_noise=noise if alpha > 0 else "uniform",
            gradient_checkpointing=False,
        )
        data = Dataset.from_list([{"prompt": p, "completion": c} for p, c in train])
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=peft_config
        )
        trainer.remove_callback(PrinterCallback)  # its per-step dicts would drown the sweep's progress lines
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    trained, history = trainer.model, trainer.state.log_history
    # The optimizer's state (twice the trainable weights) would otherwise live through the evaluation.
    trainer.optimizer = trainer.lr_scheduler = None
    trainer.accelerator.free_memory()
    del trainer
    gc.collect()
    return trained, (losses[-1] if losses else math.nan), history


def _evaluate(
    config: SweepConfig, model: Any, tokenizer: Any, train: list[Pair], heldout: list[Pair]
) -> dict[str, float]:
    from ..eval import (
        bleu,
        degenerate_share,
        diversity_metrics,
        generate_greedy,
        mean_completion_loss,
        output_lengths,
        rouge_l,
    )

    train_probe = train[: config.eval_prompts]
    heldout_probe = heldout[: config.eval_prompts]

    def generate(pairs: list[Pair]) -> list[str]:
        prompts = [prompt for prompt, _ in pairs]
        penalty = config.repetition_penalty
        return generate_greedy(
            model, tokenizer, prompts, max_new_tokens=config.max_new_tokens, repetition_penalty=penalty
        )

    train_outputs = generate(train_probe)
    heldout_outputs = generate(heldout_probe)
    lengths = output_lengths(heldout_outputs)
    return {
        "clean_train_loss": mean_completion_loss(model, tokenizer, train_probe, max_length=config.max_length),
        "heldout_loss": mean_completion_loss(model, tokenizer, heldout, max_length=config.max_length),
        "train_rouge_l": rouge_l(train_outputs, [c for _, c in train_probe]),
        "train_bleu": bleu(train_outputs, [c for _, c in train_probe]),
        "heldout_length_chars": lengths["chars"],
        "heldout_length_words": lengths["words"],
        **{f"heldout_{k}": v for k, v in diversity_metrics(heldout_outputs, config.prefix_words).items()},
        "heldout_degenerate": degenerate_share(heldout_outputs),
        "example_output": heldout_outputs[0] if heldout_outputs else "",  # type: ignore[dict-item]
    }


def _progress(todo: list[tuple[str, float, int]], total: int) -> Any:
    """tqdm's bar on a terminal; one plain line per finished cell when stderr goes to a file or a pipe."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(todo, desc="neftune sweep", unit="cell", initial=total - len(todo), total=total)
        return
    start = time.time()
    for done, cell in enumerate(todo, total - len(todo) + 1):
        yield cell
        print(
            f"neftune sweep: cell {done}/{total} ({cell_name(*cell)}) done, {time.time() - start:.0f} s",
            file=sys.stderr,
        )


def run_sweep(config: SweepConfig, progress: bool = True) -> dict[str, Any]:
    """Train and evaluate every cell not already finished; write results.json, report.md and plots."""
    from .report import write_report

    out = Path(config.output_dir)
    # Nothing is written until the directory and the inputs are known to be good: a failed start never blocks
    # its own retry.
    resuming = check_output_dir(out, config.signature())
    data = load_run_data(config.model, config.dataset, config.prompt_format)
    train, heldout = split_pairs(data.pairs, config.heldout)
    if config.max_train_examples:
        train = train[: config.max_train_examples]
    (out / "cells").mkdir(parents=True, exist_ok=True)
    if not resuming:
        (out / CONFIG_NAME).write_text(json.dumps(config.signature(), indent=1))
    tokenizer = data.tokenizer
    cells = config.cells()
    todo = [cell for cell in cells if not (out / "cells" / f"{cell_name(*cell)}.json").exists()]
    if progress and not sys.stderr.isatty():
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()  # TRL's tokenising passes would print bars into the log file
    if progress:
        print(
            f"neftune sweep: {len(cells)} cells ({len(cells) - len(todo)} done), model "
            f"{config.model or 'embedded toy'}, {len(train)} training / {len(heldout)} held-out examples, "
            f"prompt format {data.prompt_format}, lr {config.learning_rate:g}",
            file=sys.stderr,
        )
    iterator: Any = _progress(todo, len(cells)) if progress else todo
    for noise, alpha, seed in iterator:
        start = time.time()
        model, noisy_loss, history = _train(config, noise, alpha, seed, train, tokenizer)
        metrics = _evaluate(config, model, tokenizer, train, heldout)
        result = {
            "noise": noise,
            "alpha": alpha,
            "seed": seed,
            "noisy_train_loss": noisy_loss,
            "first_train_loss": next((e["loss"] for e in history if "loss" in e), math.nan),
            "seconds": round(time.time() - start, 1),
            **metrics,
            "noise_to_signal": next(
                (e["neftune/noise_to_signal"] for e in reversed(history) if "neftune/noise_to_signal" in e), 0.0
            ),
        }
        (out / "cells" / f"{cell_name(noise, alpha, seed)}.json").write_text(json.dumps(result, indent=1))
    results = [json.loads((out / "cells" / f"{cell_name(*cell)}.json").read_text()) for cell in cells]
    return write_report(config, results, len(train), len(heldout), data.prompt_format)
