"""The command line as a new user meets it: one-line errors with the fix (exit 2, no traceback), `--debug`,
extras checked before any work, `--version`, `neftune sft --help` and `--model`."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")
pytest.importorskip("rouge_score")
from neftune.cli import commands as cli
from neftune.cli.support import show_neftune_log
from neftune.sweep import runner as sweep_runner


def _error_line(capsys: pytest.CaptureFixture[str], argv: list[str], command: str) -> str:
    """Run `neftune argv` in process; it must fail with status 2 and exactly one stderr line, no traceback."""
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"neftune {command}: error: ") and "Traceback" not in err
    return lines[0]


def _must_not_train(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a cell was trained although the inputs are invalid")

    monkeypatch.setattr(sweep_runner, "_train", fail)


@pytest.mark.parametrize(
    ("argv", "fix"),
    [
        (["demo", "--alpha", "-1"], "use a positive value such as 5.0, or 0 to turn noise off"),
        (["sweep", "--alphas", "5,x"], "'x' in '5,x' is not a number; give comma-separated values such as 0,5,10,15"),
        (["sweep", "--seeds", "0,1.5"], "'1.5' in '0,1.5' is not a whole number"),
        (["sweep", "--alphas", "0,-1"], "alpha in --alphas must be >= 0, got -1.0"),
        (["sweep", "--noises", "uniform,foo"], "noise 'foo' in --noises is not one of uniform, gaussian, symmetric"),
        (["sweep", "--steps", "0"], "steps must be a whole number >= 1, got 0 (--steps)"),
        (["sweep", "--learning-rate=-1e-3"], "learning_rate must be a positive number, got -0.001"),
        (["sweep", "--finetune", "qlora"], "argument --finetune: invalid choice: 'qlora'"),
        (["sweep", "--dataset", "nonexistent.jsonl"], "dataset file 'nonexistent.jsonl' does not exist"),
        (["sweep", "--model", "/nonexistent/dir"], "model '/nonexistent/dir' does not exist; pass an existing"),
        (["sweep", "--scalings", "per_sequence,row"], "unknown scaling 'row' in scalings (--scalings); choose from"),
        (["sweep", "--scalings", "padded,padded"], "--scalings lists a value twice"),
        (["sweep", "--margin", "-0.1"], "margin must be a finite number >= 0 (nats), got -0.1 (--margin)"),
        (["sweep", "--noisy-loss-draws", "0"], "noisy_loss_draws must be a whole number >= 1, got 0"),
        (["sweep", "--eval-batch-size", "0"], "eval_batch_size must be a whole number >= 1, got 0"),
        (["sweep", "--time-budget", "0"], "time_budget must be a positive number, got 0.0 (--time-budget)"),
        (["report", "missing-dir"], "sweep directory 'missing-dir' does not exist; pass the --output-dir of"),
        (["report"], "the following arguments are required: directory; see `neftune report --help`"),
        (["sft", "--modle", "foo"], "unrecognised argument(s) --modle foo (did you mean --model?)"),
        (["sft", "--output_dir", "o"], "--model is required: a hub id (e.g. Qwen/Qwen2.5-0.5B)"),
        (["sft", "--model", "/nonexistent/dir", "--output_dir", "o"], "model '/nonexistent/dir' does not exist"),
        (["sft", "--model", "toy", "--neftune_noise_alpha", "-1"], "neftune_noise_alpha must be >= 0"),
        (["sft", "--model", "toy", "--neftune_clean_loss_steps", "0"], "neftune_clean_loss_steps must be >= 1"),
        (["frobnicate"], "invalid choice: 'frobnicate' (choose from 'demo', 'sweep', 'report', 'run', 'sft')"),
    ],
)
def test_every_cli_error_is_one_line_with_the_fix(
    argv: list[str], fix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _must_not_train(monkeypatch)
    command = argv[0] if argv[0] in ("demo", "sweep", "report", "sft") else ""
    line = _error_line(capsys, argv, command) if command else None
    if line is None:  # an unknown command: the top-level parser answers
        assert cli.main(argv) == 2
        line = capsys.readouterr().err.strip()
        assert line.startswith("neftune: error: ") and len(line.splitlines()) == 1
    assert fix in line
    assert not any(tmp_path.iterdir()), "a failed start wrote something"


def test_a_jsonl_with_other_columns_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "other.jsonl"
    data.write_text(json.dumps({"question": "x", "answer": "y"}) + "\n")
    line = _error_line(capsys, ["sweep", "--dataset", str(data), "--output-dir", str(tmp_path / "out")], "sweep")
    assert "unsupported record with keys ['answer', 'question']: expected Alpaca" in line
    assert not (tmp_path / "out").exists()


def test_debug_flag_and_environment_show_the_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main(["--debug", "demo", "--alpha", "-1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().endswith("or 0 to turn noise off.")
    monkeypatch.setenv("NEFTUNE_DEBUG", "1")
    assert cli.main(["demo", "--alpha", "-1"]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_an_unexpected_error_names_its_type_and_the_debug_switch(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(args: Any) -> int:
        raise OSError("disk\nfull")

    monkeypatch.setattr(cli, "run_demo_command", crash)
    line = _error_line(capsys, ["demo"], "demo")
    assert line == (
        "neftune demo: error: OSError: disk full (run `neftune --debug ...` or set NEFTUNE_DEBUG=1 for the traceback)"
    )


@pytest.mark.parametrize(
    ("argv", "module", "install"),
    [
        (["demo"], "transformers", 'pip install "neftune[transformers]"'),
        (["sweep"], "rouge_score", 'pip install "neftune[eval]"'),
        (["sweep"], "tokenizers", 'pip install "neftune[eval]"'),
        (["report", "missing-dir"], "matplotlib", 'pip install "neftune[eval]"'),
        (["sft", "--model", "toy"], "trl", 'pip install "neftune[trl]"'),
        (["sft", "--model", "toy", "--lora", "true"], "peft", 'pip install "neftune[trl,peft]"'),
    ],
)
def test_missing_extras_are_named_before_any_work(
    argv: list[str],
    module: str,
    install: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    _must_not_train(monkeypatch)
    line = _error_line(capsys, argv, argv[0])
    assert f"needs {module}, which is not installed; run: {install}" in line
    assert not any(tmp_path.iterdir())


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("neftune 0.") and "torch 2." in out


def test_sft_help_is_headed_and_grouped(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sft", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: neftune sft --model MODEL")
    positions = [out.index(title) for title in ("model and data:", "NEFTune options", "TRL SFTConfig / transformers")]
    assert positions == sorted(positions)
    neftune_block = out[positions[1] : positions[2]]
    assert "--neftune_noise_alpha" in neftune_block and "--learning_rate" not in neftune_block
    assert "--learning_rate" in out[positions[2] :] and "--neftune_scaling" not in out[positions[2] :]


def test_the_activation_line_shows_once_at_the_default_level(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("neftune")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    try:
        show_neftune_log()
        show_neftune_log()  # idempotent: one handler, one line per message
        logger.info("NEFTune active on model.embed_tokens: alpha=5.0, scaling=per_sequence")
        logger.info("NEFTune: some chatter")
        logger.warning("a warning")
        assert capsys.readouterr().err.splitlines() == [
            "NEFTune active on model.embed_tokens: alpha=5.0, scaling=per_sequence",
            "a warning",
        ]
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


def test_real_process_exit_status_and_no_traceback(tmp_path: Path) -> None:
    source = str(Path(cli.__file__).resolve().parents[2])  # this checkout's neftune, whatever is installed
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([source, env.get("PYTHONPATH", "")])
    env.pop("NEFTUNE_DEBUG", None)
    result = subprocess.run(
        [sys.executable, "-m", "neftune", "demo", "--alpha", "-1"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "neftune demo: error: NEFTune alpha must be >= 0, got -1.0; use a positive value such as 5.0, or 0 to turn "
        "noise off."
    ]


def test_every_sweep_flag_reaches_the_sweep_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The sweep's flags are passed on by name: each one set on the command line arrives in `SweepConfig`."""
    import neftune.sweep

    seen: list[Any] = []
    monkeypatch.setattr(neftune.sweep, "run_sweep", lambda config: seen.append(config) or {"cells": []})
    argv = ["sweep", "--output-dir", str(tmp_path / "out"), "--alphas", "0,7", "--seeds", "3,4"]
    argv += ["--scalings", "per_sequence,padded", "--packing", "--margin", "0.02", "--noisy-loss-draws", "3"]
    argv += ["--eval-batch-size", "4", "--time-budget", "60", "--finetune", "lora", "--lora-r", "4"]
    argv += ["--epochs", "2", "--learning-rate", "0.001", "--batch-size", "2", "--gradient-accumulation", "2"]
    argv += ["--max-length", "96", "--max-train-examples", "20", "--heldout", "6", "--eval-prompts", "5"]
    argv += ["--max-new-tokens", "12", "--prefix-words", "4", "--prompt-format", "alpaca"]
    assert cli.main(argv) == 0
    (config,) = seen
    expected = {
        "output_dir": str(tmp_path / "out"),
        "alphas": (0.0, 7.0),
        "seeds": (3, 4),
        "scalings": ("per_sequence", "padded"),
        "packing": True,
        "margin": 0.02,
        "noisy_loss_draws": 3,
        "eval_batch_size": 4,
        "time_budget": 60.0,
        "finetune": "lora",
        "lora_r": 4,
        "steps": None,
        "epochs": 2.0,
        "learning_rate": 0.001,
        "batch_size": 2,
        "gradient_accumulation": 2,
        "max_length": 96,
        "max_train_examples": 20,
        "heldout": 6,
        "eval_prompts": 5,
        "max_new_tokens": 12,
        "prefix_words": 4,
        "prompt_format": "alpaca",
        "model": None,
    }
    assert {name: getattr(config, name) for name in expected} == expected
