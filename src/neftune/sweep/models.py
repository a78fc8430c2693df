"""Setting up a run of `neftune sweep` or `neftune sft`: the model and tokenizer (a hub id, a local directory, a GGUF
file, or the embedded tiny Llama), the data, and the LoRA adapter."""

from __future__ import annotations

import atexit
import gc
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import NEFTuneError


class RunData(NamedTuple):
    tokenizer: Any
    pairs: list[tuple[str, str]]
    prompt_format: str  # "alpaca" or "chat", as resolved for this tokenizer


def load_run_data(model: str | None, dataset: str | None, prompt_format: str = "auto") -> RunData:
    """The tokenizer and the (prompt, completion) pairs of a run; the embedded tiny model (a base model: Alpaca
    under "auto") gets a tokenizer trained on the run's own text."""
    from .data import load_pairs, resolve_prompt_format

    if model is None:
        from ..toy import tiny_tokenizer

        renderer = tiny_tokenizer()  # renders chat templates here; the run's tokenizer is trained on the result
        chosen = "alpaca" if prompt_format == "auto" else resolve_prompt_format(prompt_format, renderer)
        pairs = load_pairs(dataset, renderer, chosen)
        return RunData(load_tokenizer(None, [prompt + completion for prompt, completion in pairs]), pairs, chosen)
    check_model_location(model)
    tokenizer = load_tokenizer(model, [])
    chosen = resolve_prompt_format(prompt_format, tokenizer)
    return RunData(tokenizer, load_pairs(dataset, tokenizer, chosen), chosen)


def lora_config(rank: int) -> Any:
    """The PEFT LoRA adapter both commands train (`--lora` / `--finetune lora`): rank `rank`, alpha twice the rank,
    on every linear layer."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", task_type="CAUSAL_LM")


def sft_trainer_inputs(
    model: str | None, tokenizer: Any, pairs: list[tuple[str, str]], *, seed: int, lora_rank: int | None
) -> dict[str, Any]:
    """`model`, `train_dataset`, `processing_class` and `peft_config` of neftune's SFTTrainer for one run: a fresh
    model (`load_model`), the pairs as a prompt/completion dataset, and a LoRA adapter when `lora_rank` is given."""
    from datasets import Dataset

    return {
        "model": load_model(model, tokenizer, seed),
        "train_dataset": Dataset.from_list([{"prompt": p, "completion": c} for p, c in pairs]),
        "processing_class": tokenizer,
        "peft_config": lora_config(lora_rank) if lora_rank is not None else None,
    }


def tokenizer_and_pairs(model: str | None, dataset: str | None) -> tuple[Any, list[tuple[str, str]]]:
    """`load_run_data` with the Alpaca template, as (tokenizer, pairs)."""
    data = load_run_data(model, dataset, "alpaca")
    return data.tokenizer, data.pairs


def check_model_location(model: str) -> None:
    """A model given as a path must exist (a hub id has at most one '/'); say so before transformers' repo-id error."""
    path = Path(model).expanduser()
    looks_local = model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model or path.suffix == ".gguf"
    if path.exists():
        if path.is_dir() and not (path / "config.json").exists():
            raise NEFTuneError(
                f"model directory {model!r} has no config.json; pass a directory written by save_pretrained, a "
                ".gguf file, or a hub id such as Qwen/Qwen2.5-0.5B"
            )
        return
    if looks_local:
        raise NEFTuneError(
            f"model {model!r} does not exist; pass an existing directory (with config.json), a .gguf file, a hub id "
            "such as Qwen/Qwen2.5-0.5B, or toy for the built-in tiny model"
        )


def load_tokenizer(model: str | None, corpus: list[str]) -> Any:
    if model is None:
        from ..toy import tiny_tokenizer

        return tiny_tokenizer(vocab_size=400, corpus=corpus)
    from transformers import AutoTokenizer

    directory, gguf = _location(model)
    tokenizer = (
        AutoTokenizer.from_pretrained(directory, gguf_file=gguf) if gguf else AutoTokenizer.from_pretrained(directory)
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# GGUF file -> directory holding its dequantised weights as a plain checkpoint, written once per process.
_GGUF_PLAIN: dict[str, str] = {}
TOY_EMBEDDING_STD = 0.3


def load_model(model: str | None, tokenizer: Any, seed: int) -> Any:
    """A fresh copy of the model for one sweep cell (fp32 on CPU, bf16 on a GPU)."""
    import torch

    if model is None:
        from ..toy import tiny_llama_for

        tiny = tiny_llama_for(tokenizer, hidden_size=64, seed=seed)
        # Llama's init (std 0.02) gives a 64-wide toy tiny embeddings, so alpha 5 would be ~3x the signal; std 0.3
        # puts the noise-to-signal ratio at alpha 5 near 0.15, the range of real models.
        with torch.no_grad():
            tiny.get_input_embeddings().weight.normal_(0.0, TOY_EMBEDDING_STD)
        return tiny
    from transformers import AutoModelForCausalLM

    directory, gguf = _location(model)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if gguf:
        # Each cell loads the plain copy from disk: one model in memory, not a cached one plus a deep copy.
        return AutoModelForCausalLM.from_pretrained(_dequantized(directory, gguf, dtype), dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)


def _dequantized(directory: str, gguf: str, dtype: Any) -> str:
    """A GGUF checkpoint as a plain trainable checkpoint (transformers refuses to train a GGUF-quantised model),
    dequantised once per process into a temporary directory, which is removed at exit."""
    key = f"{directory}/{gguf}"
    if key not in _GGUF_PLAIN:
        from transformers import AutoModelForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf, dtype=dtype)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype)  # type: ignore[no-untyped-call]
        plain.load_state_dict(loaded.state_dict())
        del loaded
        scratch = tempfile.mkdtemp(prefix="neftune-gguf-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        plain.save_pretrained(scratch)
        del plain
        gc.collect()
        _GGUF_PLAIN[key] = scratch
    return _GGUF_PLAIN[key]


def _location(model: str) -> tuple[str, str | None]:
    """(directory or hub id, GGUF file name inside it or None)."""
    path = Path(model)
    if path.suffix == ".gguf":
        return str(path.parent), path.name
    return model, None
