"""The alpha sweep: train every (noise, alpha, seed) cell with the drop-in SFTTrainer and measure it.

Each finished cell is written to `<output_dir>/cells/<cell>.json`; running the same command again skips them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NEFTuneError
from .data import Pair, split_pairs
from .models import load_model, tokenizer_and_pairs


@dataclass(frozen=True)
class SweepConfig:
    """What to sweep. `model=None` and `dataset=None` select the embedded defaults (no downloads)."""

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
    learning_rate: float = 2e-3
    batch_size: int = 8
    gradient_accumulation: int = 1
    max_length: int = 256
    max_train_examples: int | None = None
    heldout: int = 32
    eval_prompts: int = 32
    max_new_tokens: int = 64
    repetition_penalty: float = 1.2
    prefix_words: int = 8
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.finetune not in ("full", "lora"):
            raise NEFTuneError(f"finetune must be 'full' or 'lora', got {self.finetune!r}")
        if (self.steps is None) == (self.epochs is None):
            raise NEFTuneError("give exactly one of steps or epochs")
        if not self.alphas or not self.seeds:
            raise NEFTuneError("the sweep needs at least one alpha and one seed")

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


def cell_name(noise: str, alpha: float, seed: int) -> str:
    return f"{noise}-alpha{alpha:g}-seed{seed}"


def _train(config: SweepConfig, noise: str, alpha: float, seed: int, train: list[Pair], tokenizer: Any) -> Any:
    import torch
    from datasets import Dataset

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
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return trainer.model, (losses[-1] if losses else math.nan), trainer.state.log_history


def _evaluate(
    config: SweepConfig, model: Any, tokenizer: Any, train: list[Pair], heldout: list[Pair]
) -> dict[str, float]:
    from ..eval import bleu, diversity_metrics, generate_greedy, mean_completion_loss, output_lengths, rouge_l

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
        "example_output": heldout_outputs[0] if heldout_outputs else "",  # type: ignore[dict-item]
    }


def run_sweep(config: SweepConfig, progress: bool = True) -> dict[str, Any]:
    """Train and evaluate every cell not already finished; write results.json, report.md and plots."""
    from .report import write_report

    out = Path(config.output_dir)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    signature_path = out / "config.json"
    if signature_path.exists() and json.loads(signature_path.read_text()) != json.loads(
        json.dumps(config.signature())
    ):
        raise NEFTuneError(
            f"{out} holds a sweep with other settings (see {signature_path}); use another --output-dir to start anew"
        )
    signature_path.write_text(json.dumps(config.signature(), indent=1))
    tokenizer, pairs = tokenizer_and_pairs(config.model, config.dataset)
    train, heldout = split_pairs(pairs, config.heldout)
    if config.max_train_examples:
        train = train[: config.max_train_examples]
    cells = config.cells()
    todo = [cell for cell in cells if not (out / "cells" / f"{cell_name(*cell)}.json").exists()]
    iterator: Any = todo
    if progress:
        from tqdm import tqdm

        iterator = tqdm(todo, desc="neftune sweep", unit="cell", initial=len(cells) - len(todo), total=len(cells))
    for noise, alpha, seed in iterator:
        start = time.time()
        model, noisy_loss, history = _train(config, noise, alpha, seed, train, tokenizer)
        metrics = _evaluate(config, model, tokenizer, train, heldout)
        result = {
            "noise": noise,
            "alpha": alpha,
            "seed": seed,
            "noisy_train_loss": noisy_loss,
            "seconds": round(time.time() - start, 1),
            **metrics,
            "noise_to_signal": next(
                (e["neftune/noise_to_signal"] for e in reversed(history) if "neftune/noise_to_signal" in e), 0.0
            ),
        }
        (out / "cells" / f"{cell_name(noise, alpha, seed)}.json").write_text(json.dumps(result, indent=1))
    results = [json.loads((out / "cells" / f"{cell_name(*cell)}.json").read_text()) for cell in cells]
    return write_report(config, results, len(train), len(heldout))
