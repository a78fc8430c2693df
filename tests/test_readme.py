"""The README's first snippet runs as written on a CPU (with a tiny model, tokenizer and dataset in scope)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("trl")
from neftune.toy import prompt_completion_dataset, tiny_llama_for, tiny_tokenizer

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_first_snippet_trains_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snippet = python_blocks()[0]
    assert "SFTTrainer(model=model" in snippet and "bf16=" in snippet
    monkeypatch.chdir(tmp_path)  # it writes to output_dir="out"
    tokenizer = tiny_tokenizer()
    namespace = {
        "model": tiny_llama_for(tokenizer),
        "tokenizer": tokenizer,
        "dataset": prompt_completion_dataset(rows=8),
    }
    exec(compile(snippet, str(README), "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 3  # 8 rows, batch 8, TRL's default 3 epochs
    assert trainer.args.bf16 is False and trainer.args.use_cpu is True
    assert trainer.neftune_callback.config.alpha == 5.0
