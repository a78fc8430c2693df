"""Instruction data for the sweep: a hub dataset or a local JSON/JSONL file (Alpaca, Dolly or messages format),
or an embedded default generated in code, as (prompt, completion) text pairs."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from ..errors import NEFTuneError

# The Alpaca prompt format the paper's training code used.
ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    "response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}"
    "\n\n### Response:\n"
)

Pair = tuple[str, str]


def _pair(record: dict[str, Any], tokenizer: Any) -> Pair:
    """One record of any supported format as (prompt text, completion text)."""
    if "messages" in record:
        messages = record["messages"]
        if not messages or messages[-1].get("role") != "assistant":
            raise NEFTuneError("a messages record must end with an assistant message (the completion)")
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        return prompt, messages[-1]["content"]
    instruction = record.get("instruction")
    completion = record.get("output", record.get("response"))
    if instruction is None or completion is None:
        raise NEFTuneError(
            f"unsupported record with keys {sorted(record)}: expected Alpaca (instruction, input, output), "
            "Dolly (instruction, context, response) or messages (a list of role/content ending with the assistant)"
        )
    extra = record.get("input") or record.get("context") or ""
    template = ALPACA_PROMPT_WITH_INPUT if extra else ALPACA_PROMPT
    return template.format(instruction=instruction, input=extra), str(completion)


def _records(dataset: str) -> list[dict[str, Any]]:
    path = Path(dataset)
    if path.suffix in (".json", ".jsonl") or path.is_file():
        if not path.is_file():
            raise NEFTuneError(f"dataset file {dataset!r} does not exist")
        text = path.read_text()
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        loaded = json.loads(text)
        return list(loaded) if isinstance(loaded, list) else list(loaded["data"])
    from datasets import load_dataset

    return [dict(row) for row in load_dataset(dataset, split="train")]


def load_pairs(dataset: str | None, tokenizer: Any) -> list[Pair]:
    """All (prompt, completion) pairs of `dataset` (a hub id or a local file), or of the embedded default."""
    if dataset is None:
        return embedded_pairs()
    return [_pair(record, tokenizer) for record in _records(dataset)]


def split_pairs(pairs: list[Pair], heldout: int, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """A fixed shuffle (independent of the run's seeds), the last `heldout` pairs held out."""
    if heldout >= len(pairs):
        raise NEFTuneError(f"heldout={heldout} leaves no training data out of {len(pairs)} examples")
    shuffled = list(pairs)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:-heldout], shuffled[-heldout:]


_SUBJECTS = ["cat", "river", "mountain", "robot", "garden", "ship", "library", "forest", "city", "violin"]
_ADJECTIVES = ["quiet", "bright", "ancient", "small", "busy", "cold", "gentle", "strange", "tall", "green"]
_VERBS = ["watches", "remembers", "carries", "follows", "paints", "finds", "builds", "hears", "opens", "keeps"]


def embedded_pairs(count: int = 400, seed: int = 0) -> list[Pair]:
    """Templated instruction data made in code: descriptions and small stories of varied length."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        subject, adjective, verb = rng.choice(_SUBJECTS), rng.choice(_ADJECTIVES), rng.choice(_VERBS)
        other = rng.choice(_SUBJECTS)
        if rng.random() < 0.5:
            instruction = f"Describe a {adjective} {subject}."
            sentences = rng.randint(1, 4)
            body = " ".join(
                f"The {adjective} {subject} {rng.choice(_VERBS)} the {rng.choice(_ADJECTIVES)} "
                f"{rng.choice(_SUBJECTS)}."
                for _ in range(sentences)
            )
        else:
            instruction = f"Tell a short story about a {subject} that {verb} a {other}."
            body = f"Once a {subject} {verb} a {other}. " + " ".join(
                f"Then it {rng.choice(_VERBS)} a {rng.choice(_ADJECTIVES)} {rng.choice(_SUBJECTS)}."
                for _ in range(rng.randint(1, 3))
            )
        pairs.append((ALPACA_PROMPT.format(instruction=instruction), body))
    return pairs
