"""Offline toy pieces for the demo, the examples and the tests: a tiny tokenizer, a tiny Llama and small datasets.

Nothing here downloads anything; every object is built from code in a fraction of a second.
"""

from __future__ import annotations

import random
from typing import Any

TEXTS: list[tuple[str, str]] = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("Say hello.", "Hello there!"),
    ("What is two plus two?", "Two plus two is four."),
    ("Which planet is the largest?", "Jupiter is the largest planet in the solar system."),
    ("Write a short greeting for a friend.", "Hi! It is great to see you again, I hope you are well."),
    ("What do bees make?", "Bees make honey."),
]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_tokenizer(vocab_size: int = 160, corpus: list[str] | None = None) -> Any:
    """A byte-level BPE tokenizer trained on `corpus` (default: `TEXTS`), with `<pad>`, `<eos>` and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,  # its bars print blank lines to stdout
    )
    tokenizer.train_from_iterator(corpus if corpus is not None else [f"{p} {c}" for p, c in TEXTS], trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="<eos>",
        model_input_names=[
            "input_ids",
            "attention_mask",
        ],  # transformers 4 added token_type_ids; generate refuses them
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(
    vocab_size: int, hidden_size: int = 32, pad_token_id: int = 0, eos_token_id: int = 1, seed: int = 0
) -> Any:
    """A 2-layer Llama from a config (Llama-2-7B sizes in the comments)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=vocab_size,  # 32000
        hidden_size=hidden_size,  # 4096
        intermediate_size=hidden_size * 2,  # 11008
        num_hidden_layers=2,  # 32
        num_attention_heads=4,  # 32
        num_key_value_heads=2,  # 32
        max_position_embeddings=2048,  # 4096
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]


def tiny_llama_for(tokenizer: Any, hidden_size: int = 32, seed: int = 0) -> Any:
    return tiny_llama(len(tokenizer), hidden_size, tokenizer.pad_token_id, tokenizer.eos_token_id, seed)


def _cycled(rows: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [TEXTS[rng.randrange(len(TEXTS))] for _ in range(rows)]


def prompt_completion_dataset(rows: int = 32, seed: int = 0) -> Any:
    from datasets import Dataset

    return Dataset.from_list([{"prompt": p + " ", "completion": c} for p, c in _cycled(rows, seed)])


def conversational_dataset(rows: int = 32, seed: int = 0) -> Any:
    from datasets import Dataset

    return Dataset.from_list(
        [
            {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": c}]}
            for p, c in _cycled(rows, seed)
        ]
    )


def language_modeling_dataset(tokenizer: Any, rows: int = 32, seed: int = 0) -> Any:
    """Tokenized `input_ids`/`attention_mask`/`labels` rows of varied length, for a plain `Trainer`."""
    from datasets import Dataset

    texts = [f"{p} {c}" for p, c in _cycled(rows, seed)]
    encoded = tokenizer(texts)
    return Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})


def preference_dataset(rows: int = 16, seed: int = 0) -> Any:
    from datasets import Dataset

    rng = random.Random(seed)
    data = []
    for prompt, good in _cycled(rows, seed):
        _, bad = TEXTS[rng.randrange(len(TEXTS))]
        data.append({"prompt": prompt + " ", "chosen": good, "rejected": bad if bad != good else "I do not know."})
    return Dataset.from_list(data)


def cpu_training_kwargs(output_dir: str, **overrides: Any) -> dict[str, Any]:
    """Arguments for fast, quiet CPU runs (TRL defaults to bf16 and checkpointing: both off here)."""
    kwargs: dict[str, Any] = {
        "output_dir": output_dir,
        "max_steps": 6,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "logging_steps": 2,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "bf16": False,
        "seed": 0,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    kwargs.update(overrides)
    return kwargs
