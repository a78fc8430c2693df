"""The alpha sweep: train every (noise, alpha, scaling, seed) cell with the drop-in SFTTrainer and measure it.

Each finished cell is written to `<output_dir>/cells/<cell>.json` (with its per-example outputs beside it, see
`store`); running the same command again skips them. A seed fixes the data order and the initialisation (model or
adapter) in every cell, and the noise comes from neftune's own generator seeded by it, so cells of one seed differ
only by their noise: each cell records fingerprints of both, and the report checks them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import SCALINGS, NEFTuneConfig
from ..errors import NEFTuneError
from .data import Pair, split_pairs
from .models import load_model, tokenizer_and_pairs
from .store import BASELINE, cell_name, cell_path, write_cell
from .verdicts import DEFAULT_MARGIN

__all__ = ["SweepConfig", "cell_name", "run_sweep"]


@dataclass(frozen=True)
class SweepConfig:
    """What to sweep. `model=None` and `dataset=None` select the embedded defaults (no downloads)."""

    model: str | None = None
    dataset: str | None = None
    output_dir: str = "neftune-sweep"
    alphas: tuple[float, ...] = (0.0, 5.0, 10.0, 15.0)
    seeds: tuple[int, ...] = (0,)
    noises: tuple[str, ...] = ("uniform",)
    scalings: tuple[str, ...] = ("per_sequence",)
    packing: bool = False
    margin: float = DEFAULT_MARGIN
    noisy_loss_draws: int = 4
    eval_batch_size: int = 8
    time_budget: float | None = None  # seconds; no new cell starts after it (rerun to continue)
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
        for scaling in self.scalings:
            if scaling not in SCALINGS:
                raise NEFTuneError(f"unknown scaling {scaling!r} in scalings; choose from {', '.join(SCALINGS)}")
        if not self.scalings:
            raise NEFTuneError("the sweep needs at least one scaling, e.g. scalings=('per_sequence',)")
        if not (self.margin >= 0 and math.isfinite(self.margin)):
            raise NEFTuneError(f"margin must be a finite number >= 0 (nats), got {self.margin}; the default is 0.01")
        if self.eval_batch_size < 1:
            raise NEFTuneError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.noisy_loss_draws < 1:
            raise NEFTuneError(f"noisy_loss_draws must be >= 1, got {self.noisy_loss_draws}")

    def cells(self) -> list[tuple[str, float, str, int]]:
        """(noise, alpha, scaling, seed); alpha 0 is one baseline shared by every noise kind and scaling."""
        return [
            (noise, alpha, scaling, seed)
            for alpha in self.alphas
            for noise in (("none",) if alpha == 0 else self.noises)
            for scaling in (("none",) if alpha == 0 else self.scalings)
            for seed in self.seeds
        ]

    def signature(self) -> dict[str, Any]:
        """Everything a cell's result depends on, to refuse resuming into a different sweep."""
        kept = dataclasses.asdict(self)
        for name in ("output_dir", "alphas", "seeds", "noises", "scalings", "eval_batch_size", "time_budget"):
            kept.pop(name)
        return kept


def _digest(tensors: Any) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().to("cpu").float().numpy().tobytes())
    return digest.hexdigest()[:16]


def _train(
    config: SweepConfig, noise: str, alpha: float, scaling: str, seed: int, train: list[Pair], tokenizer: Any
) -> tuple[Any, float, list[dict[str, Any]], dict[str, str]]:
    """One cell's training; returns the model, the last logged loss, the log and the pairing fingerprints."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from ..trl import SFTConfig, SFTTrainer

    model = load_model(config.model, tokenizer, seed)
    peft_config = None
    if config.finetune == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=config.lora_r, lora_alpha=2 * config.lora_r, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    fingerprints: dict[str, str] = {}
    batches = hashlib.sha256()

    class Fingerprint(TrainerCallback):
        """The trainable weights as training starts: the same for every cell of one seed."""

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            fingerprints["init"] = _digest(p for p in model.parameters() if p.requires_grad)

    def record_batch(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if module.training and ids is not None:
            batches.update(ids.detach().to("cpu").numpy().tobytes())

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
            packing=config.packing,  # TRL's default strategy: best-fit decreasing, padding-free rows
            save_strategy="no",
            report_to=[],
            seed=seed,
            use_cpu=not on_gpu,
            bf16=on_gpu,
            disable_tqdm=True,
            neftune_noise_alpha=alpha,
            neftune_noise=noise if alpha > 0 else "uniform",
            neftune_scaling=scaling if alpha > 0 else "per_sequence",
            # neftune's own generator: the noise consumes none of torch's global RNG, so later epochs' data order
            # stays the same as the alpha-0 cell's
            neftune_seed=seed,
            gradient_checkpointing=False,
        )
        data = Dataset.from_list([{"prompt": p, "completion": c} for p, c in train])
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[Fingerprint()],
        )
        hook = trainer.model.register_forward_pre_hook(record_batch, with_kwargs=True)
        try:
            trainer.train()
        finally:
            hook.remove()
    fingerprints["data"] = batches.hexdigest()[:16]
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return trainer.model, (losses[-1] if losses else math.nan), trainer.state.log_history, fingerprints


def _mean_loss(losses: list[tuple[float, int]]) -> float:
    return sum(s for s, _ in losses) / max(sum(t for _, t in losses), 1)


def _evaluate(
    config: SweepConfig,
    model: Any,
    tokenizer: Any,
    train: list[Pair],
    heldout: list[Pair],
    noise_config: NEFTuneConfig,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The cell's metrics and its per-example outputs. Clean and noisy training losses are taken on the same fixed
    first training examples, as many as the held-out loss uses; generations on the first `eval_prompts` of each."""
    from ..eval import (
        bleu,
        completion_losses,
        diversity_metrics,
        generate_greedy,
        noisy_completion_losses,
        output_lengths,
        rouge_l_scores,
        sentence_bleu_scores,
    )

    loss_train = train[: len(heldout)]
    length = config.max_length

    def generate(pairs: list[Pair]) -> list[str]:
        prompts = [prompt for prompt, _ in pairs]
        penalty = config.repetition_penalty
        return generate_greedy(
            model,
            tokenizer,
            prompts,
            max_new_tokens=config.max_new_tokens,
            repetition_penalty=penalty,
            batch_size=config.eval_batch_size,
        )

    batch = config.eval_batch_size
    clean = completion_losses(model, tokenizer, loss_train, max_length=length, batch_size=batch)
    noisy = noisy_completion_losses(
        model, tokenizer, loss_train, noise_config, draws=config.noisy_loss_draws, max_length=length, batch_size=batch
    )
    held = completion_losses(model, tokenizer, heldout, max_length=length, batch_size=batch)
    outputs: dict[str, list[str]] = {}
    rows: list[dict[str, Any]] = []
    for split, pairs, losses in (("train", loss_train, clean), ("heldout", heldout, held)):
        probe = pairs[: config.eval_prompts]
        generated = outputs[split] = generate(probe)
        references = [c for _, c in probe]
        rouge, sentence_bleu = rouge_l_scores(generated, references), sentence_bleu_scores(generated, references)
        for index, (loss, tokens) in enumerate(losses):
            row: dict[str, Any] = {"split": split, "id": index, "clean_loss": loss / max(tokens, 1), "tokens": tokens}
            if split == "train":
                row["noisy_loss"] = noisy[index][0] / max(tokens, 1)
            if index < len(generated):
                row |= {
                    "generation": generated[index],
                    "rouge_l": rouge[index],
                    "bleu": sentence_bleu[index],
                    "length_chars": len(generated[index]),
                    "length_words": len(generated[index].split()),
                }
            rows.append(row)
    train_probe = loss_train[: config.eval_prompts]
    rouge_train = [r["rouge_l"] for r in rows if r["split"] == "train" and "rouge_l" in r]
    lengths = output_lengths(outputs["heldout"])
    metrics = {
        "clean_train_loss": _mean_loss(clean),
        "noisy_train_loss": _mean_loss(noisy),
        "heldout_loss": _mean_loss(held),
        "train_rouge_l": sum(rouge_train) / len(rouge_train) if rouge_train else 0.0,
        "train_bleu": bleu(outputs["train"], [c for _, c in train_probe]),
        "heldout_length_chars": lengths["chars"],
        "heldout_length_words": lengths["words"],
        **{f"heldout_{k}": v for k, v in diversity_metrics(outputs["heldout"], config.prefix_words).items()},
        "example_output": outputs["heldout"][0] if outputs["heldout"] else "",
    }
    return metrics, rows


def _truncation(tokenizer: Any, train: list[Pair], max_length: int) -> dict[str, float]:
    """How much of the training completions fits in `max_length` (prompt first, as TRL cuts and packs them)."""
    total = kept = cut = 0
    for prompt, completion in train:
        prompt_len = len(tokenizer(prompt)["input_ids"])
        completion_len = len(tokenizer(completion, add_special_tokens=False)["input_ids"]) + 1  # + EOS
        fits = max(0, min(prompt_len + completion_len, max_length) - prompt_len)
        total, kept, cut = total + completion_len, kept + fits, cut + (fits < completion_len)
    return {
        "completion_tokens_trained_fraction": kept / max(total, 1),
        "examples_truncated": cut,
        "examples": len(train),
    }


def _baseline(
    config: SweepConfig, out: Path, tokenizer: Any, train: list[Pair], heldout: list[Pair]
) -> dict[str, Any]:
    """The untrained model, evaluated once like a cell: memorisation scores only mean something against it."""
    from .store import read_cell

    done = read_cell(out, BASELINE)
    if done is not None:
        return done
    start = time.time()
    model = load_model(config.model, tokenizer, config.seeds[0])
    metrics, rows = _evaluate(config, model, tokenizer, train, heldout, NEFTuneConfig(alpha=0.0))
    result = {"noise": "none", "alpha": 0.0, "scaling": "none", "seed": config.seeds[0], "untrained": True}
    result |= {"seconds": round(time.time() - start, 1), **metrics}
    write_cell(out, BASELINE, result, rows)
    return result


def run_sweep(config: SweepConfig, progress: bool = True) -> dict[str, Any]:
    """Train and evaluate every cell not already finished; write results.json, report.md and plots."""
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
    todo = [cell for cell in cells if not cell_path(out, cell_name(cell[0], cell[1], cell[3], cell[2])).exists()]
    _write_data(out, tokenizer, train, heldout, config)
    _baseline(config, out, tokenizer, train, heldout)
    iterator: Any = todo
    if progress:
        from tqdm import tqdm

        iterator = tqdm(todo, desc="neftune sweep", unit="cell", initial=len(cells) - len(todo), total=len(cells))
    began = time.time()
    for noise, alpha, scaling, seed in iterator:
        if config.time_budget is not None and time.time() - began > config.time_budget:
            print(f"time budget of {config.time_budget:g} s spent; run the same command again to continue")
            break
        start = time.time()
        model, logged_loss, history, fingerprints = _train(config, noise, alpha, scaling, seed, train, tokenizer)
        noise_config = NEFTuneConfig(
            alpha=alpha,
            noise=noise if alpha > 0 else "uniform",
            scaling=scaling if alpha > 0 else "per_sequence",
            seed=seed,
        )
        metrics, rows = _evaluate(config, model, tokenizer, train, heldout, noise_config)
        result = {
            "noise": noise,
            "alpha": alpha,
            "scaling": scaling,
            "seed": seed,
            "logged_train_loss": logged_loss,
            "seconds": round(time.time() - start, 1),
            **metrics,
            "noise_to_signal": next(
                (e["neftune/noise_to_signal"] for e in reversed(history) if "neftune/noise_to_signal" in e), 0.0
            ),
            "init_fingerprint": fingerprints.get("init", ""),
            "data_fingerprint": fingerprints["data"],
        }
        write_cell(out, cell_name(noise, alpha, seed, scaling), result, rows)
    return rebuild_report(out)


def _write_data(out: Path, tokenizer: Any, train: list[Pair], heldout: list[Pair], config: SweepConfig) -> None:
    """The sweep's full settings (its axes may grow when resumed), the evaluated examples (so outputs.jsonl ids can
    be read back) and the truncation of the training set."""
    settings = dataclasses.asdict(config)
    previous = out / "sweep.json"
    if previous.exists():  # a sweep resumed with other axes (say, padded at one alpha only) keeps the old cells
        old = json.loads(previous.read_text())
        for axis in ("alphas", "seeds", "noises", "scalings"):
            settings[axis] = list(dict.fromkeys([*old.get(axis, []), *settings[axis]]))
    previous.write_text(json.dumps(settings, indent=1))
    if (out / "data.json").exists():
        return
    examples = [
        {"split": split, "id": index, "prompt": prompt, "reference": completion}
        for split, pairs in (("train", train[: len(heldout)]), ("heldout", heldout))
        for index, (prompt, completion) in enumerate(pairs)
    ]
    (out / "examples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in examples))
    data = {
        "train_examples": len(train),
        "heldout_examples": len(heldout),
        "loss_examples": min(len(train), len(heldout)),
        "truncation": _truncation(tokenizer, train, config.max_length),
    }
    (out / "data.json").write_text(json.dumps(data, indent=1))


def rebuild_report(directory: str | Path) -> dict[str, Any]:
    """results.json, report.md and metrics.png of a sweep directory, from its cells alone (no training)."""
    from .report import load_sweep, write_report

    return write_report(load_sweep(Path(directory)))
