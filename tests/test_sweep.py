"""`neftune sweep` and `neftune sft` on the embedded default (tiny model, data made in code), and data formats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")
pytest.importorskip("rouge_score")
from neftune.errors import NEFTuneError
from neftune.sweep import SweepConfig, run_sweep
from neftune.sweep import runner as sweep_runner
from neftune.sweep.data import ALPACA_PROMPT, load_pairs, split_pairs
from neftune.toy import tiny_tokenizer

SMALL = {"steps": 12, "heldout": 16, "eval_prompts": 8, "max_new_tokens": 12, "batch_size": 8}


def test_sweep_writes_results_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = SweepConfig(output_dir=str(tmp_path), alphas=(0.0, 5.0), seeds=(0, 1), **SMALL)
    summary = run_sweep(config, progress=False)
    assert [(c["noise"], c["alpha"], c["seed"]) for c in summary["cells"]] == [
        ("none", 0.0, 0),
        ("none", 0.0, 1),
        ("uniform", 5.0, 0),
        ("uniform", 5.0, 1),
    ]
    for name in ("results.json", "report.md", "metrics.png", "config.json"):
        assert (tmp_path / name).stat().st_size > 0
    cell = summary["cells"][2]
    for key in ("clean_train_loss", "heldout_loss", "train_rouge_l", "train_bleu", "heldout_length_chars"):
        assert cell[key] == cell[key]  # not NaN
    assert 0.0 <= cell["train_rouge_l"] <= 1.0 and 0.0 <= cell["train_bleu"] <= 100.0
    assert cell["noise_to_signal"] > 0 and summary["cells"][0]["noise_to_signal"] == 0.0
    groups = {(g["noise"], g["alpha"]): g for g in summary["groups"]}
    assert groups[("uniform", 5.0)]["clean_train_loss"]["n"] == 2
    report = (tmp_path / "report.md").read_text()
    assert "| uniform | 5 |" in report and "signatures" in report

    def must_not_train(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(sweep_runner, "_train", must_not_train)
    again = run_sweep(config, progress=False)
    assert again["cells"] == summary["cells"]


def test_resuming_into_a_different_sweep_is_refused(tmp_path: Path) -> None:
    run_sweep(SweepConfig(output_dir=str(tmp_path), alphas=(0.0,), **SMALL), progress=False)
    with pytest.raises(NEFTuneError, match="holds a sweep with other settings"):
        run_sweep(SweepConfig(output_dir=str(tmp_path), alphas=(0.0,), **{**SMALL, "steps": 13}), progress=False)


def test_variants_are_compared_in_one_sweep(tmp_path: Path) -> None:
    summary = run_sweep(
        SweepConfig(output_dir=str(tmp_path), alphas=(0.0, 5.0), noises=("uniform", "symmetric"), **SMALL),
        progress=False,
    )
    assert [(c["noise"], c["alpha"]) for c in summary["cells"]] == [
        ("none", 0.0),
        ("uniform", 5.0),
        ("symmetric", 5.0),
    ]


def test_config_validation() -> None:
    with pytest.raises(NEFTuneError, match="exactly one of steps or epochs"):
        SweepConfig(steps=None, epochs=None)
    with pytest.raises(NEFTuneError, match="finetune must be 'full' or 'lora'"):
        SweepConfig(finetune="qlora")


@pytest.mark.parametrize(
    ("record", "expected_prompt_part", "completion"),
    [
        (
            {"instruction": "Name a fruit.", "input": "", "output": "Apple."},
            "### Instruction:\nName a fruit.",
            "Apple.",
        ),
        ({"instruction": "Sum.", "input": "2 and 3", "output": "5"}, "### Input:\n2 and 3", "5"),
        ({"id": 1, "instruction": "Why?", "response": "Because."}, "### Instruction:\nWhy?", "Because."),
        ({"instruction": "Who?", "context": "Ada wrote it.", "response": "Ada."}, "### Input:\nAda wrote it.", "Ada."),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            "<|user|>hi<|end|><|assistant|>",
            "hello",
        ),
    ],
)
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_local_data_formats(
    tmp_path: Path, record: dict[str, Any], expected_prompt_part: str, completion: str, suffix: str
) -> None:
    path = tmp_path / f"data{suffix}"
    path.write_text(json.dumps(record) + "\n" if suffix == ".jsonl" else json.dumps([record]))
    ((prompt, got),) = load_pairs(str(path), tiny_tokenizer())
    assert expected_prompt_part in prompt and got == completion


def test_bad_data_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "x", "answer": "y"}) + "\n")
    with pytest.raises(NEFTuneError, match=r"unsupported record with keys \['answer', 'question'\]"):
        load_pairs(str(path), tiny_tokenizer())
    with pytest.raises(NEFTuneError, match="does not exist"):
        load_pairs(str(tmp_path / "missing.jsonl"), tiny_tokenizer())
    with pytest.raises(NEFTuneError, match="leaves no training data"):
        split_pairs([("a", "b")], heldout=1)


def test_the_shared_dolly_file_loads() -> None:
    dolly = Path(__file__).resolve().parents[2] / "shared" / "data" / "dolly" / "dolly-6400.jsonl"
    if not dolly.exists():
        pytest.skip("../shared/data/dolly is not beside this checkout")
    pairs = load_pairs(str(dolly), tiny_tokenizer())
    assert len(pairs) == 6400 and pairs[0][0].startswith(ALPACA_PROMPT.split("{")[0])


def _cli_result(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    source = str(Path(sweep_runner.__file__).resolve().parents[2])  # this checkout's neftune
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([source, env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-m", "neftune", *args], capture_output=True, text=True, timeout=600, env=env, cwd=cwd
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _cli(*args: str, cwd: Path) -> str:
    return _cli_result(*args, cwd=cwd).stdout


def test_cli_sweep_embedded_default(tmp_path: Path) -> None:
    """`neftune sweep` with no model or dataset: the embedded default, as CI runs it."""
    out = _cli("sweep", "--output-dir", str(tmp_path / "sweep"), cwd=tmp_path)
    assert "4 cells" in out
    results = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert [g["alpha"] for g in results["groups"]] == [0.0, 5.0, 10.0, 15.0]


def test_cli_sft(tmp_path: Path) -> None:
    result = _cli_result(
        "sft",
        "--model",
        "toy",
        "--output_dir",
        str(tmp_path / "run"),
        "--max_steps",
        "3",
        "--report_to",
        "none",
        "--neftune_noise_alpha",
        "5",
        "--neftune_noise",
        "gaussian",
        "--max_train_examples",
        "32",
        cwd=tmp_path,
    )
    assert "saved to" in result.stdout
    err = result.stderr.splitlines()
    assert sum(line.startswith("NEFTune active: alpha 5, per_sequence") for line in err) == 1
    assert any("training the built-in TOY model" in line for line in err)
    assert any("prompt format alpaca" in line for line in err)
    assert (tmp_path / "run" / "model.safetensors").exists() or any((tmp_path / "run").glob("*.safetensors"))


def test_cli_help_lists_every_subcommand() -> None:
    result = subprocess.run([sys.executable, "-m", "neftune", "--help"], capture_output=True, text=True, check=True)
    for command in ("demo", "sweep", "sft"):
        assert command in result.stdout
