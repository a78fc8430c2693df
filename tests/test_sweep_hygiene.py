"""The sweep's prologue and report, without training: nothing is written until the inputs are valid, a failed
start never blocks its retry, unrelated directories are refused, and the report shows what its numbers can say."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("trl")
pytest.importorskip("matplotlib")
from neftune.errors import NEFTuneError
from neftune.eval import degenerate_share
from neftune.sweep import SweepConfig, rebuild_report, run_sweep
from neftune.sweep import runner as sweep_runner
from neftune.sweep.report import SweepData, _cell, _markdown, aggregate, write_report
from neftune.sweep.runner import default_learning_rate

SMALL = {"steps": 2, "heldout": 8, "eval_prompts": 2, "max_new_tokens": 4, "batch_size": 2}


def _metrics(loss: float = 1.0) -> dict[str, Any]:
    return {
        "clean_train_loss": loss,
        "heldout_loss": loss,
        "train_rouge_l": 0.1,
        "train_bleu": 1.0,
        "heldout_length_chars": 10.0,
        "heldout_length_words": 2.0,
        "heldout_rep_2": 0.0,
        "heldout_rep_3": 0.0,
        "heldout_rep_4": 0.0,
        "heldout_diversity": 1.0,
        "heldout_log_diversity": 20.0,
        "heldout_diversity_outputs": 2.0,
        "heldout_degenerate": 0.0,
        "example_output": "text",
    }


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float, int]]:
    """Replace training and evaluation by instant fakes; the list records which cells were trained."""
    calls: list[tuple[str, float, int]] = []

    def train(config: Any, noise: str, alpha: float, scaling: str, seed: int, *rest: Any) -> Any:
        calls.append((noise, alpha, seed))
        return None, 1.0, [{"loss": 1.5}, {"loss": 1.0}], {"init": "i", "data": "d"}

    monkeypatch.setattr(sweep_runner, "_train", train)
    monkeypatch.setattr(sweep_runner, "_evaluate", lambda *args: (_metrics(), []))
    return calls


def _sweep(config: SweepConfig, results: list[dict[str, Any]], n_train: int, n_heldout: int, **data: Any) -> Any:
    """A report's input made in memory, as `load_sweep` reads it back from a directory."""
    cells = [row | {"_name": f"cell{index}"} for index, row in enumerate(results)]
    counts = {"train_examples": n_train, "heldout_examples": n_heldout}
    return SweepData(Path(config.output_dir), config, cells, None, {}, counts | data)


def test_a_failed_start_writes_nothing_and_its_retry_works(
    tmp_path: Path, trained: list[tuple[str, float, int]]
) -> None:
    out = tmp_path / "sweep"
    data = tmp_path / "data.jsonl"
    with pytest.raises(NEFTuneError, match="does not exist"):
        run_sweep(SweepConfig(output_dir=str(out), dataset=str(data), alphas=(0.0, 5.0), **SMALL), progress=False)
    assert not out.exists() and trained == []
    data.write_text("".join(json.dumps({"instruction": f"Say {i}.", "output": f"{i}"}) + "\n" for i in range(20)))
    summary = run_sweep(
        SweepConfig(output_dir=str(out), dataset=str(data), alphas=(0.0, 5.0), **SMALL), progress=False
    )
    assert trained == [("none", 0.0, 0), ("uniform", 5.0, 0)] and len(summary["cells"]) == 2
    assert summary["train_examples"] == 12 and summary["heldout_examples"] == 8


def test_a_settings_mismatch_names_the_settings(tmp_path: Path, trained: list[tuple[str, float, int]]) -> None:
    run_sweep(SweepConfig(output_dir=str(tmp_path), alphas=(0.0,), **SMALL), progress=False)
    config_before = (tmp_path / "config.json").read_text()
    with pytest.raises(NEFTuneError) as error:
        run_sweep(
            SweepConfig(output_dir=str(tmp_path), alphas=(0.0,), **{**SMALL, "steps": 3, "max_length": 64}),
            progress=False,
        )
    assert str(error.value).startswith(
        f"'{tmp_path}' holds a sweep with other settings (max_length 256 there, 64 now;"
    )
    assert "steps 2 there, 3 now)" in str(error.value)
    assert (tmp_path / "config.json").read_text() == config_before and len(trained) == 1


def test_a_directory_that_is_not_a_sweep_is_never_written(
    tmp_path: Path, trained: list[tuple[str, float, int]]
) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(NEFTuneError, match=r"is not a sweep directory: its config.json holds no sweep settings"):
        run_sweep(SweepConfig(output_dir=str(model_dir), **SMALL), progress=False)
    project = tmp_path / "project"
    project.mkdir()
    (project / "report.md").write_text("mine")
    with pytest.raises(NEFTuneError, match=r"is not empty and is not a sweep directory \(no config.json\)"):
        run_sweep(SweepConfig(output_dir=str(project), **SMALL), progress=False)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text('{"finetune": "full",')
    with pytest.raises(NEFTuneError, match=r"config.json' is not valid JSON \(.*\); it is not a sweep's"):
        run_sweep(SweepConfig(output_dir=str(corrupt), **SMALL), progress=False)
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json"]
    assert sorted(p.name for p in project.iterdir()) == ["report.md"] and (project / "report.md").read_text() == "mine"
    assert sorted(p.name for p in corrupt.iterdir()) == ["config.json"] and trained == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"noises": ("uniform", "bogus")}, "noise 'bogus' in --noises is not one of uniform, gaussian, symmetric"),
        ({"alphas": (0.0, -5.0)}, "alpha in --alphas must be >= 0, got -5.0"),
        ({"alphas": (0.0, math.inf)}, "must be finite"),
        ({"alphas": (5.0, 5.0)}, "--alphas lists a value twice"),
        ({"seeds": (-1,)}, "seeds must be whole numbers >= 0, got -1"),
        ({"batch_size": 0}, r"batch_size must be a whole number >= 1, got 0 \(--batch-size\)"),
        ({"max_train_examples": 0}, r"max_train_examples must be a whole number >= 1, got 0"),
        ({"learning_rate": 0.0}, r"learning_rate must be a positive number, got 0.0 \(--learning-rate\)"),
        ({"prompt_format": "vicuna"}, "prompt_format must be one of auto, alpaca, chat"),
        ({"steps": None, "epochs": -1.0}, r"epochs must be a positive number, got -1.0"),
    ],
)
def test_every_option_is_checked_when_the_config_is_made(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(NEFTuneError, match=message):
        SweepConfig(**overrides)


def test_learning_rate_defaults_by_model_kind() -> None:
    assert SweepConfig().learning_rate == 2e-3 == default_learning_rate(None, "full")
    assert SweepConfig(model="org/model").learning_rate == 2e-5
    assert SweepConfig(model="org/model", finetune="lora").learning_rate == 2e-4
    assert SweepConfig(model="org/model", learning_rate=1e-4).learning_rate == 1e-4
    assert SweepConfig(model="org/model").signature()["learning_rate"] == 2e-5  # resolved, so resuming is exact


def _row(alpha: float, seed: int, **values: Any) -> dict[str, Any]:
    noise = "none" if alpha == 0 else "uniform"
    return {
        "noise": noise,
        "alpha": alpha,
        "scaling": "none" if alpha == 0 else "per_sequence",
        "seed": seed,
        "noisy_train_loss": 1.0,
        "logged_train_loss": 1.0,
        "first_train_loss": 2.0,
        **_metrics(),
        **values,
    }


def test_report_cells_say_what_a_value_can_mean() -> None:
    assert _cell("heldout_rep_2", {"mean": math.nan, "std": math.nan, "n": 0}) == "n/a"
    assert _cell("heldout_log_diversity", {"mean": 20.0, "std": 0.0, "n": 3}) == "20 (saturated)"
    assert _cell("heldout_loss", {"mean": 1.23456, "std": 0.0, "n": 1}) == "1.235"
    assert _cell("heldout_loss", {"mean": 1.23456, "std": 0.01, "n": 2}) == "1.235 ± 0.010"


def test_report_notes_and_warnings() -> None:
    config = SweepConfig(model="org/model", steps=3, batch_size=8)
    results = [
        _row(0.0, 0),
        _row(5.0, 0, logged_train_loss=3.9, first_train_loss=2.64, heldout_degenerate=0.75),
        _row(15.0, 0, heldout_rep_2=math.nan, heldout_log_diversity=math.nan),
    ]
    text = _markdown(_sweep(config, results, 6336, 64, prompt_format="chat"), aggregate(results), [], "verified")
    assert "nan" not in text.replace("no spread", "")
    assert "1 seed, no spread: each value is a single run." in text and "± 0.000" not in text
    assert "prompt format chat" in text
    assert "n/a: no held-out output reached the 8-word diversity prefix" in text
    assert "log-diversity 20 (saturated): no output repeats" in text
    assert "alpha 15: n/a" in text
    assert (
        "- uniform, alpha 5, seed 0: the training loss rose (2.640 -> 3.900): the learning rate (2e-05) is probably "
        "too high for this model; lower --learning-rate" in text
    )
    assert "- uniform, alpha 5, seed 0: 75% of the held-out outputs are degenerate" in text
    assert "- Each run saw at most 24 of the 6336 training examples (0.4%)" in text
    assert text.count("the training loss rose") == 1 and text.count("are degenerate") == 1


def test_report_without_problems_has_no_warnings(tmp_path: Path) -> None:
    config = SweepConfig(output_dir=str(tmp_path), seeds=(0, 1))
    results = [_row(a, s, clean_train_loss=1.0 + 0.1 * s) for a in (0.0, 5.0) for s in (0, 1)]
    write_report(_sweep(config, results, 368, 32))
    text = (tmp_path / "report.md").read_text()
    assert "## Warnings" not in text and "1.050 ± 0.071" in text
    assert (tmp_path / "metrics.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("texts", "share"),
    [
        (["A cat sat on the mat.", "Dogs bark at night.", "", "Birds sing."], 0.25),
        (["the the the the the the the the", "ok fine then", "!!!!!!!!!!", "A real answer here."], 0.5),
        (["same", "same", "same", "other"], 0.75),
        ([], 0.0),
    ],
)
def test_degenerate_share(texts: list[str], share: float) -> None:
    assert degenerate_share(texts) == share


def test_progress_off_a_terminal_is_one_plain_line_per_cell(
    tmp_path: Path, trained: list[tuple[str, float, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    run_sweep(SweepConfig(output_dir=str(tmp_path), alphas=(0.0, 5.0), **SMALL), progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("neftune sweep: 2 cells (0 done), model embedded toy,")
    assert "prompt format alpaca, lr 0.002" in lines[0]
    assert lines[1].startswith("neftune sweep: untrained baseline evaluated, ")
    assert [line.split(" done")[0] for line in lines[2:]] == [
        "neftune sweep: cell 1/2 (none-alpha0-seed0)",
        "neftune sweep: cell 2/2 (uniform-alpha5-seed0)",
    ]
    assert not any("\r" in line for line in lines)


class _Templated:
    """A tokenizer stand-in with a chat template that writes BOS itself (as Gemma's does)."""

    bos_token = "<bos>"
    chat_template = "set"

    def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: Any) -> str:
        return "<bos>" + "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_prompt_formats(tmp_path: Path) -> None:
    from neftune.sweep.data import ALPACA_PROMPT_WITH_INPUT, load_pairs, resolve_prompt_format

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "Sum.", "input": "2 and 3", "output": "5"}) + "\n")
    ((chat, completion),) = load_pairs(str(data), _Templated(), "chat")
    assert (chat, completion) == ("<user>Sum.\n\n2 and 3<assistant>", "5")  # BOS left to the tokenizer
    ((alpaca, _),) = load_pairs(str(data), _Templated(), "alpaca")
    assert alpaca == ALPACA_PROMPT_WITH_INPUT.format(instruction="Sum.", input="2 and 3")
    assert resolve_prompt_format("auto", _Templated()) == "chat"

    class Base:
        chat_template = None

    assert resolve_prompt_format("auto", Base()) == "alpaca"
    with pytest.raises(NEFTuneError, match="prompt_format 'chat' needs a tokenizer with a chat template"):
        resolve_prompt_format("chat", Base())


@pytest.mark.parametrize("extra", [{}, {"note": "a label set through the Python API"}])
def test_a_sweep_saved_with_the_retired_extra_setting_reports_and_resumes(
    tmp_path: Path, trained: list[tuple[str, float, int]], extra: dict[str, Any]
) -> None:
    config = SweepConfig(output_dir=str(tmp_path), alphas=(0.0, 5.0), **SMALL)
    first = run_sweep(config, progress=False)
    for name in ("config.json", "sweep.json"):
        settings = json.loads((tmp_path / name).read_text())
        assert "extra" not in settings
        # as sweeps written while SweepConfig had an `extra` field saved them
        (tmp_path / name).write_text(json.dumps(settings | {"extra": extra}, indent=1))
    (tmp_path / "results.json").unlink()
    rebuilt = rebuild_report(tmp_path)
    assert rebuilt["cells"] == first["cells"] and rebuilt["config"] == first["config"]
    resumed = run_sweep(config, progress=False)
    assert len(trained) == 2 and resumed["cells"] == first["cells"]  # nothing trained again


def test_a_time_budget_stops_between_cells_in_seed_order_and_the_rerun_finishes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each fake cell takes 10 s of a fake clock: a 25 s budget stops after seed 0's three cells, a 15 s one in the
    middle of a seed; the rerun continues with that seed's missing cell, then the next seeds in order."""
    now = [0.0]
    trained: list[tuple[str, float, str, int]] = []

    def train(config: Any, noise: str, alpha: float, scaling: str, seed: int, *rest: Any) -> Any:
        now[0] += 10.0
        trained.append((noise, alpha, scaling, seed))
        return None, 1.0, [{"loss": 1.5}], {"init": f"i{seed}", "data": f"d{seed}"}

    monkeypatch.setattr(sweep_runner, "_train", train)
    monkeypatch.setattr(sweep_runner, "_evaluate", lambda *args: (_metrics(), []))
    monkeypatch.setattr(sweep_runner, "time", SimpleNamespace(time=lambda: now[0]))
    axes = {"alphas": (0.0, 5.0), "scalings": ("per_sequence", "padded"), "seeds": (0, 1, 2)}

    def sweep(out: Path, budget: float | None) -> None:
        run_sweep(SweepConfig(output_dir=str(out), time_budget=budget, **axes, **SMALL), progress=False)

    seed_0 = [("none", 0.0, "none", 0), ("uniform", 5.0, "per_sequence", 0), ("uniform", 5.0, "padded", 0)]
    sweep(tmp_path / "a", 25.0)
    assert trained == seed_0
    trained.clear()
    sweep(tmp_path / "a", None)
    assert [cell[3] for cell in trained] == [1, 1, 1, 2, 2, 2]

    trained.clear()
    sweep(tmp_path / "b", 15.0)
    assert trained == seed_0[:2]
    trained.clear()
    sweep(tmp_path / "b", None)
    assert trained[0] == seed_0[2] and [cell[3] for cell in trained[1:]] == [1, 1, 1, 2, 2, 2]
    assert len(list((tmp_path / "b" / "cells").glob("*-seed*.json"))) == 9
