"""Loading the sweep's model and tokenizer: a hub id, a local directory, a GGUF file, or the embedded tiny Llama."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any


def tokenizer_and_pairs(model: str | None, dataset: str | None) -> tuple[Any, list[tuple[str, str]]]:
    """The tokenizer and the (prompt, completion) pairs of a run; the embedded tiny model gets a tokenizer
    trained on the run's own text."""
    from .data import load_pairs

    if model is None:
        from ..toy import tiny_tokenizer

        pairs = load_pairs(dataset, tiny_tokenizer())  # the default tokenizer only renders chat templates here
        return load_tokenizer(None, [prompt + completion for prompt, completion in pairs]), pairs
    tokenizer = load_tokenizer(model, [])
    return tokenizer, load_pairs(dataset, tokenizer)


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


_GGUF_CACHE: dict[str, Any] = {}
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
        return copy.deepcopy(_dequantized(directory, gguf, dtype))
    return AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)


def _dequantized(directory: str, gguf: str, dtype: Any) -> Any:
    """A GGUF checkpoint as a plain trainable model (transformers refuses to train a GGUF-quantised one),
    loaded once per process: every cell gets a deep copy."""
    key = f"{directory}/{gguf}"
    if key not in _GGUF_CACHE:
        from transformers import AutoModelForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf, dtype=dtype)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype)  # type: ignore[no-untyped-call]
        plain.load_state_dict(loaded.state_dict())
        _GGUF_CACHE[key] = plain
    return _GGUF_CACHE[key]


def _location(model: str) -> tuple[str, str | None]:
    """(directory or hub id, GGUF file name inside it or None)."""
    path = Path(model)
    if path.suffix == ".gguf":
        return str(path.parent), path.name
    return model, None
