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
from neftune.sweep import SweepConfig, rebuild_report, run_sweep
from neftune.sweep import runner as sweep_runner
from neftune.sweep.data import ALPACA_PROMPT, load_pairs, split_pairs
from neftune.toy import tiny_tokenizer

# Tiny runs: 24 examples pack into a few rows, so 4 steps are several epochs.
TINY = {
    "steps": 4,
    "heldout": 8,
    "eval_prompts": 4,
    "max_new_tokens": 8,
    "batch_size": 4,
    "max_train_examples": 24,
    "noisy_loss_draws": 2,
}


def test_paired_sweep_with_scalings_packing_and_analysis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = SweepConfig(
        output_dir=str(tmp_path),
        alphas=(0.0, 5.0),
        seeds=(0, 1),
        scalings=("per_sequence", "padded"),
        packing=True,
        **TINY,
    )
    summary = run_sweep(config, progress=False)
    assert [(c["noise"], c["alpha"], c["scaling"], c["seed"]) for c in summary["cells"]] == [
        ("none", 0.0, "none", 0),
        ("none", 0.0, "none", 1),
        ("uniform", 5.0, "per_sequence", 0),
        ("uniform", 5.0, "per_sequence", 1),
        ("uniform", 5.0, "padded", 0),
        ("uniform", 5.0, "padded", 1),
    ]
    for name in (
        "results.json",
        "report.md",
        "metrics.png",
        "config.json",
        "sweep.json",
        "data.json",
        "examples.jsonl",
    ):
        assert (tmp_path / name).stat().st_size > 0
    cells = summary["cells"]
    # A seed fixes the initial weights and every batch (over several epochs of packed rows) across alphas and
    # scalings; another seed changes both.
    for seed in (0, 1):
        prints = {(c["init_fingerprint"], c["data_fingerprint"]) for c in cells if c["seed"] == seed}
        assert len(prints) == 1
    assert cells[0]["init_fingerprint"] != cells[1]["init_fingerprint"]
    assert cells[0]["data_fingerprint"] != cells[1]["data_fingerprint"]
    assert summary["pairing"].startswith("verified")
    # Like with like: clean and noisy loss on the same 8 training examples, as many as the held-out loss.
    assert summary["data"]["loss_examples"] == 8 and summary["data"]["truncation"]["examples"] == 24
    assert 0.0 < summary["data"]["truncation"]["completion_tokens_trained_fraction"] <= 1.0
    outputs = [json.loads(line) for line in (tmp_path / "cells" / "uniform-padded-alpha5-seed0.outputs.jsonl").open()]
    assert [(r["split"], r["id"]) for r in outputs] == [("train", i) for i in range(8)] + [
        ("heldout", i) for i in range(8)
    ]
    assert sum("generation" in r for r in outputs) == 8 and all(r["tokens"] > 0 for r in outputs)
    noised = [r for r in outputs if r["split"] == "train"]
    assert all(r["noisy_loss"] != r["clean_loss"] for r in noised)
    clean = [json.loads(line) for line in (tmp_path / "cells" / "none-alpha0-seed0.outputs.jsonl").open()]
    assert all(r["noisy_loss"] == r["clean_loss"] for r in clean if r["split"] == "train")
    weighted = sum(r["clean_loss"] * r["tokens"] for r in noised) / sum(r["tokens"] for r in noised)
    assert weighted == pytest.approx(cells[4]["clean_train_loss"], rel=1e-9)
    # The untrained model, once; comparisons against alpha 0 for both scalings and per-sequence vs padded.
    assert summary["baseline"]["untrained"] is True and summary["baseline"]["heldout_loss"] > 0
    comparisons = summary["comparisons"]
    assert len(comparisons) == 5 + 5 + 4
    keys = {"signature", "metric", "noise", "alpha", "scaling", "packing", "n", "mean_diff", "ci_low", "ci_high"}
    for row in comparisons:
        assert keys <= set(row) and row["verdict"] in ("reproduced", "opposite", "not established")
        assert row["n"] == 2 and row["packing"] is True and row["bootstrap_low"] is not None
        assert row["ci_low"] <= row["mean_diff"] <= row["ci_high"]
    (first,) = [r for r in comparisons if r["scaling"] == "per_sequence" and r["metric"] == "clean_train_loss"][:1]
    diffs = [c["clean_train_loss"] - b["clean_train_loss"] for c, b in zip(cells[2:4], cells[0:2], strict=True)]
    assert first["against"] == "alpha 0" and first["mean_diff"] == pytest.approx(sum(diffs) / 2)
    report = (tmp_path / "report.md").read_text()
    assert "| untrained |" in report and "0-100" in report and "Pairing by seed: verified" in report

    def must_not_train(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(sweep_runner, "_train", must_not_train)
    again = run_sweep(config, progress=False)
    assert again["cells"] == summary["cells"] and again["comparisons"] == summary["comparisons"]
    (tmp_path / "report.md").unlink()
    rebuilt = rebuild_report(tmp_path)
    assert rebuilt["comparisons"] == summary["comparisons"] and (tmp_path / "report.md").read_text() == report


def test_report_refuses_a_directory_that_is_not_a_sweep(tmp_path: Path) -> None:
    with pytest.raises(NEFTuneError, match="is not a sweep directory"):
        rebuild_report(tmp_path)


def test_resuming_into_a_different_sweep_is_refused(tmp_path: Path) -> None:
    run_sweep(SweepConfig(output_dir=str(tmp_path), alphas=(0.0,), **TINY), progress=False)
    with pytest.raises(NEFTuneError, match="holds a sweep with other settings"):
        run_sweep(SweepConfig(output_dir=str(tmp_path), alphas=(0.0,), **{**TINY, "steps": 5}), progress=False)


def test_variants_are_compared_in_one_sweep(tmp_path: Path) -> None:
    summary = run_sweep(
        SweepConfig(output_dir=str(tmp_path), alphas=(0.0, 5.0), noises=("uniform", "symmetric"), **TINY),
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
    with pytest.raises(NEFTuneError, match="unknown scaling 'row'"):
        SweepConfig(scalings=("row",))
    with pytest.raises(NEFTuneError, match="margin must be a finite number >= 0"):
        SweepConfig(margin=-0.1)


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
    """`neftune sweep` on the embedded default (as CI runs it) with the paired analysis, both scalings and packing,
    then `neftune report` rebuilding it without training."""
    out = _cli(
        "sweep", "--output-dir", str(tmp_path / "sweep"), "--alphas", "0,5", "--scalings", "per_sequence,padded",
        "--packing", "--margin", "0.02", "--steps", "3", "--heldout", "8", "--eval-prompts", "4",
        "--max-new-tokens", "8", "--max-train-examples", "16", "--batch-size", "4", "--noisy-loss-draws", "1",
        cwd=tmp_path,
    )  # fmt: skip
    assert "3 cells" in out
    results = json.loads((tmp_path / "sweep" / "results.json").read_text())
    groups = [(g["alpha"], g["scaling"]) for g in results["groups"]]
    assert groups == [(0.0, "none"), (5.0, "padded"), (5.0, "per_sequence")]
    # one seed: every comparison is computed, none can be established
    assert {(row["scaling"], row["against"]) for row in results["comparisons"]} == {
        ("per_sequence", "alpha 0"),
        ("padded", "alpha 0"),
        ("per_sequence", "padded"),
    }
    assert {row["verdict"] for row in results["comparisons"]} == {"not established"}
    assert results["config"]["margin"] == 0.02 and results["config"]["packing"] is True
    assert results["baseline"]["untrained"] is True
    (tmp_path / "sweep" / "results.json").unlink()
    assert "3 cells" in _cli("report", str(tmp_path / "sweep"), cwd=tmp_path)
    assert json.loads((tmp_path / "sweep" / "results.json").read_text())["comparisons"] == results["comparisons"]


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
    for command in ("demo", "sweep", "sft", "report"):
        assert command in result.stdout
