"""The alpha sweep: train every (noise, alpha, scaling, seed) cell with the drop-in SFTTrainer and measure it.

Each finished cell is written to `<output_dir>/cells/<cell>.json` (with its per-example outputs beside it, see
`store`); running the same command again skips them. A seed fixes the data order and the initialisation (model or
adapter) in every cell, and the noise comes from neftune's own generator seeded by it, so cells of one seed differ
only by their noise: each cell records fingerprints of both, and the report checks them.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import SCALINGS, NEFTuneConfig, validate_alpha
from ..errors import NEFTuneError
from ..noise import NOISE_KINDS
from .data import PROMPT_FORMATS, Pair, split_pairs
from .models import load_model, load_run_data, sft_trainer_inputs
from .output_dir import CONFIG_NAME, check_output_dir
from .store import BASELINE, cell_name, cell_path, write_cell
from .verdicts import DEFAULT_MARGIN

__all__ = ["SweepConfig", "cell_name", "default_learning_rate", "rebuild_report", "run_sweep"]

Cell = tuple[str, float, str, int]  # (noise, alpha, scaling, seed)


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

    def __post_init__(self) -> None:
        if self.finetune not in ("full", "lora"):
            raise NEFTuneError(f"finetune must be 'full' or 'lora', got {self.finetune!r}")
        if (self.steps is None) == (self.epochs is None):
            raise NEFTuneError("give exactly one of steps or epochs")
        if not self.alphas or not self.seeds or not self.noises:
            raise NEFTuneError("the sweep needs at least one alpha, one seed and one noise kind")
        if not self.scalings:
            raise NEFTuneError("the sweep needs at least one scaling, e.g. scalings=('per_sequence',)")
        object.__setattr__(self, "alphas", tuple(validate_alpha(a, name="alpha in --alphas") for a in self.alphas))
        for seed in self.seeds:
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise NEFTuneError(f"seeds must be whole numbers >= 0, got {seed!r} in --seeds; e.g. 0,1,2")
        for noise in self.noises:
            if noise not in NOISE_KINDS:
                raise NEFTuneError(f"noise {noise!r} in --noises is not one of {', '.join(NOISE_KINDS)}")
        for scaling in self.scalings:
            if scaling not in SCALINGS:
                raise NEFTuneError(
                    f"unknown scaling {scaling!r} in scalings (--scalings); choose from {', '.join(SCALINGS)}"
                )
        axes = (("alphas", self.alphas), ("seeds", self.seeds), ("noises", self.noises), ("scalings", self.scalings))
        for name, values in axes:
            if len(set(values)) != len(values):
                raise NEFTuneError(f"--{name} lists a value twice ({values!r}); give each once")
        counts = ["lora_r", "batch_size", "gradient_accumulation", "max_length", "heldout", "eval_prompts"]
        counts += ["max_new_tokens", "prefix_words", "noisy_loss_draws", "eval_batch_size", "steps"]
        counts += ["max_train_examples"]
        for name in counts:
            if getattr(self, name) is not None:  # steps and max_train_examples may be None
                _check_count(name, getattr(self, name))
        if self.epochs is not None:
            _check_positive("epochs", self.epochs)
        if self.time_budget is not None:
            _check_positive("time_budget", self.time_budget)
        _check_positive("repetition_penalty", self.repetition_penalty)
        if (
            isinstance(self.margin, bool)
            or not isinstance(self.margin, (int, float))
            or not 0 <= self.margin < math.inf
        ):
            raise NEFTuneError(
                f"margin must be a finite number >= 0 (nats), got {self.margin!r} (--margin); the default is 0.01"
            )
        if self.prompt_format not in PROMPT_FORMATS:
            raise NEFTuneError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {self.prompt_format!r}")
        if self.learning_rate is None:
            object.__setattr__(self, "learning_rate", default_learning_rate(self.model, self.finetune))
        _check_positive("learning_rate", self.learning_rate)

    def cells(self) -> list[Cell]:
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


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NEFTuneError(f"{name} must be a whole number >= 1, got {value!r} ({_flag(name)})")


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise NEFTuneError(f"{name} must be a positive number, got {value!r} ({_flag(name)})")


def _name(cell: Cell) -> str:
    noise, alpha, scaling, seed = cell
    return cell_name(noise, alpha, seed, scaling)


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
    from transformers import PrinterCallback, TrainerCallback

    from ..trl import SFTConfig, SFTTrainer

    lora_rank = config.lora_r if config.finetune == "lora" else None
    inputs = sft_trainer_inputs(config.model, tokenizer, train, seed=seed, lora_rank=lora_rank)
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
        trainer = SFTTrainer(args=args, callbacks=[Fingerprint()], **inputs)
        trainer.remove_callback(PrinterCallback)  # its per-step dicts would drown the sweep's progress lines
        hook = trainer.model.register_forward_pre_hook(record_batch, with_kwargs=True)
        try:
            trainer.train()
        finally:
            hook.remove()
    fingerprints["data"] = batches.hexdigest()[:16]
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    trained, history = trainer.model, trainer.state.log_history
    # The optimizer's state (twice the trainable weights) would otherwise live through the evaluation.
    trainer.optimizer = trainer.lr_scheduler = None
    trainer.accelerator.free_memory()
    del trainer
    gc.collect()
    return trained, (losses[-1] if losses else math.nan), history, fingerprints


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
        degenerate_share,
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
        "heldout_degenerate": degenerate_share(outputs["heldout"]),
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
    start = time.time()
    model = load_model(config.model, tokenizer, config.seeds[0])
    metrics, rows = _evaluate(config, model, tokenizer, train, heldout, NEFTuneConfig(alpha=0.0))
    result = {"noise": "none", "alpha": 0.0, "scaling": "none", "seed": config.seeds[0], "untrained": True}
    result |= {"seconds": round(time.time() - start, 1), **metrics}
    write_cell(out, BASELINE, result, rows)
    return result


def _progress(todo: list[Cell], total: int) -> Any:
    """tqdm's bar on a terminal; one plain line per finished cell when stderr goes to a file or a pipe."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(todo, desc="neftune sweep", unit="cell", initial=total - len(todo), total=total)
        return
    start = time.time()
    for done, cell in enumerate(todo, total - len(todo) + 1):
        yield cell
        print(f"neftune sweep: cell {done}/{total} ({_name(cell)}) done, {time.time() - start:.0f} s", file=sys.stderr)


def run_sweep(config: SweepConfig, progress: bool = True) -> dict[str, Any]:
    """Train and evaluate every cell not already finished; write results.json, report.md and plots."""
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
    # Run seed by seed, so a sweep stopped part-way (--time-budget, an interrupt) holds complete seeds and its
    # comparisons stay paired; results are still reported in the configuration order of `cells()`.
    todo = sorted(
        (cell for cell in cells if not cell_path(out, _name(cell)).exists()),
        key=lambda cell: config.seeds.index(cell[3]),
    )
    _write_data(out, tokenizer, train, heldout, config, data.prompt_format)
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
    if not cell_path(out, BASELINE).exists():
        baseline = _baseline(config, out, tokenizer, train, heldout)
        if progress:
            print(f"neftune sweep: untrained baseline evaluated, {baseline['seconds']:.0f} s", file=sys.stderr)
    iterator: Any = _progress(todo, len(cells)) if progress else todo
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
        del model  # before the next cell loads its own
        result = {
            "noise": noise,
            "alpha": alpha,
            "scaling": scaling,
            "seed": seed,
            "logged_train_loss": logged_loss,
            "first_train_loss": next((e["loss"] for e in history if "loss" in e), math.nan),
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


def _write_data(
    out: Path, tokenizer: Any, train: list[Pair], heldout: list[Pair], config: SweepConfig, prompt_format: str
) -> None:
    """The sweep's full settings (its axes may grow when resumed; the rest is held equal by config.json), the
    evaluated examples (so outputs.jsonl ids can be read back), the prompt format used and the truncation of the
    training set."""
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
        "prompt_format": prompt_format,
        "truncation": _truncation(tokenizer, train, config.max_length),
    }
    (out / "data.json").write_text(json.dumps(data, indent=1))


def rebuild_report(directory: str | Path) -> dict[str, Any]:
    """results.json, report.md and metrics.png of a sweep directory, from its cells alone (no training)."""
    from .report import load_sweep, write_report

    return write_report(load_sweep(Path(directory)))
