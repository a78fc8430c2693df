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


# How instruction records become prompts: the paper's Alpaca template, or the tokenizer's chat template (for chat
# models); "auto" picks chat when the tokenizer has a template. Messages records always use the chat template.
PROMPT_FORMATS = ("auto", "alpaca", "chat")


def _pair(record: dict[str, Any], tokenizer: Any, prompt_format: str = "alpaca") -> Pair:
    """One record of any supported format as (prompt text, completion text)."""
    if "messages" in record:
        messages = record["messages"]
        if not messages or messages[-1].get("role") != "assistant":
            raise NEFTuneError("a messages record must end with an assistant message (the completion)")
        return _chat_prompt(tokenizer, messages[:-1]), messages[-1]["content"]
    instruction = record.get("instruction")
    completion = record.get("output", record.get("response"))
    if instruction is None or completion is None:
        raise NEFTuneError(
            f"unsupported record with keys {sorted(record)}: expected Alpaca (instruction, input, output), "
            "Dolly (instruction, context, response) or messages (a list of role/content ending with the assistant)"
        )
    extra = record.get("input") or record.get("context") or ""
    if prompt_format == "chat":
        content = f"{instruction}\n\n{extra}" if extra else str(instruction)
        return _chat_prompt(tokenizer, [{"role": "user", "content": content}]), str(completion)
    template = ALPACA_PROMPT_WITH_INPUT if extra else ALPACA_PROMPT
    return template.format(instruction=instruction, input=extra), str(completion)


def _chat_prompt(tokenizer: Any, messages: list[dict[str, Any]]) -> str:
    prompt = str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    bos = getattr(tokenizer, "bos_token", None)
    # The trainer's tokenizer adds BOS itself; a template that writes it too (Gemma's) would double it.
    return prompt[len(bos) :] if bos and prompt.startswith(bos) else prompt


def resolve_prompt_format(requested: str, tokenizer: Any) -> str:
    """ "alpaca" or "chat" for `requested` ("auto", "alpaca" or "chat") and this tokenizer."""
    if requested not in PROMPT_FORMATS:
        raise NEFTuneError(f"prompt_format must be one of {PROMPT_FORMATS}, got {requested!r}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if requested == "chat" and not has_template:
        raise NEFTuneError(
            "prompt_format 'chat' needs a tokenizer with a chat template; this one has none: use alpaca"
        )
    if requested == "auto":
        return "chat" if has_template else "alpaca"
    return requested


def _records(dataset: str) -> list[dict[str, Any]]:
    path = Path(dataset)
    if path.suffix in (".json", ".jsonl") or path.is_file():
        if not path.is_file():
            raise NEFTuneError(f"dataset file {dataset!r} does not exist")
        text = path.read_text()
        if path.suffix == ".jsonl":
            return [_json(line, dataset, number) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
        loaded = _json(text, dataset, None)
        if isinstance(loaded, dict) and isinstance(loaded.get("data"), list):
            loaded = loaded["data"]
        if not isinstance(loaded, list):
            raise NEFTuneError(
                f"{dataset!r} holds no list of records: expected a JSON list, or an object with a 'data' list"
            )
        return list(loaded)
    from datasets import load_dataset

    return [dict(row) for row in load_dataset(dataset, split="train")]


def _json(text: str, dataset: str, line: int | None) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        where = f"line {line}" if line is not None else f"line {error.lineno}"
        raise NEFTuneError(
            f"{dataset!r} is not valid JSON at {where}: {error.msg}; fix or remove that record"
        ) from None


def load_pairs(dataset: str | None, tokenizer: Any, prompt_format: str = "alpaca") -> list[Pair]:
    """All (prompt, completion) pairs of `dataset` (a hub id or a local file), or of the embedded default, with
    instruction records rendered in `prompt_format` ("alpaca" or "chat")."""
    records = embedded_records() if dataset is None else _records(dataset)
    if not records:
        raise NEFTuneError(f"dataset {dataset!r} has no records")
    return [_pair(record, tokenizer, prompt_format) for record in records]


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


def embedded_records(count: int = 400, seed: int = 0) -> list[dict[str, str]]:
    """Templated instruction data made in code: descriptions and small stories of varied length."""
    rng = random.Random(seed)
    records = []
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
        records.append({"instruction": instruction, "output": body})
    return records


def embedded_pairs(count: int = 400, seed: int = 0) -> list[Pair]:
    """The embedded records in the Alpaca format."""
    return [(ALPACA_PROMPT.format(instruction=r["instruction"]), r["output"]) for r in embedded_records(count, seed)]
