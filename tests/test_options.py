"""`neftune.options` is the one source of every option: each surface that declares an option by hand (the typed
`NEFTuneConfig` and `NEFTuneCallback` signatures, the README) agrees with it, each generated surface (SFTConfig,
the CLI flags, axolotl's schema) carries it, and a value set on any surface reaches the noise or the callback."""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any, get_args, get_type_hints

import pytest

from neftune import NEFTuneConfig, NEFTuneError
from neftune.options import (
    ALPHA,
    CALLBACK_OPTIONS,
    CLEAN_LOSS_STEPS,
    FIELD_OPTIONS,
    KERNEL,
    NOISE_OPTIONS,
    SCALING,
    TRAINER_OPTIONS,
    Option,
)

README = Path(__file__).resolve().parent.parent / "README.md"
ALL_OPTIONS = (*NOISE_OPTIONS, *CALLBACK_OPTIONS)
YAML_OPTIONS = tuple(option for option in FIELD_OPTIONS if option is not ALPHA)


def other_value(option: Option[Any]) -> Any:
    """A valid value that is not the default, to see it arrive."""
    if option.choices:
        return next(choice for choice in option.choices if choice != option.default)
    if option.value_type is bool:
        return not option.default
    if option.default is None:
        return 3
    if option.value_type is int:
        return option.default + 1
    return option.default / 2 + 0.25  # alpha 2.75, schedule_warmup 0.25


def expected_type(option: Option[Any]) -> Any:
    return option.value_type | None if option.default is None else option.value_type


def documented(option: Option[Any]) -> str:
    """How a docstring's Args entry states the default: `defaults to 5.0`, `` `True` ``, `` `"auto"` ``."""
    if option.default is None:
        return "*optional*"
    if isinstance(option.default, bool):
        return f"defaults to `{option.default}`"
    if isinstance(option.default, str):
        return f'defaults to `"{option.default}"`'
    return f"defaults to {option.default!r}"


def as_python(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def cli_argv(option: Option[Any], value: Any) -> list[str]:
    return [option.flag] if option.value_type is bool else [option.flag, str(value)]


@pytest.mark.parametrize("option", ALL_OPTIONS, ids=lambda option: option.name)
def test_each_default_and_other_value_pass_the_option_check(option: Option[Any]) -> None:
    assert option.validate(option.default) == option.default
    assert option.validate(other_value(option)) == other_value(option)


@pytest.mark.parametrize("option", ALL_OPTIONS, ids=lambda option: option.name)
def test_a_bad_value_is_refused_under_the_name_the_surface_shows(option: Option[Any]) -> None:
    with pytest.raises((TypeError, NEFTuneError)) as error:
        option.validate("bogus", "--shown-name")
    assert str(error.value).startswith("--shown-name must ")


def test_names_flags_and_fields_are_unique_and_derived() -> None:
    for attribute in ("name", "field_name", "flag"):
        values = [getattr(option, attribute) for option in ALL_OPTIONS]
        assert len(values) == len(set(values)), attribute
    assert (ALPHA.field_name, ALPHA.flag, SCALING.field_name, SCALING.flag) == (
        "neftune_noise_alpha",
        "--alpha",
        "neftune_scaling",
        "--scaling",
    )
    assert [option.flag for option in NOISE_OPTIONS if option.value_type is bool] == ["--no-decoder-noise"]


def test_an_option_needs_a_check_or_choices() -> None:
    with pytest.raises(TypeError, match="option 'x' needs a check or choices"):
        Option("x", int, 1, "help")


def test_neftune_config_declares_every_noise_option() -> None:
    hints = get_type_hints(NEFTuneConfig)
    assert [field.name for field in fields(NEFTuneConfig)] == [option.name for option in NOISE_OPTIONS]
    for field, option in zip(fields(NEFTuneConfig), NOISE_OPTIONS, strict=True):
        assert field.default == option.default, option.name
        if option.choices:
            assert get_args(hints[option.name]) == option.choices, option.name
        else:
            assert hints[option.name] == expected_type(option), option.name
    assert NEFTuneConfig() == NEFTuneConfig(**{option.name: option.default for option in NOISE_OPTIONS})


@pytest.mark.parametrize("option", NOISE_OPTIONS, ids=lambda option: option.name)
def test_neftune_config_takes_every_value_and_names_the_option(option: Option[Any]) -> None:
    assert getattr(NEFTuneConfig(**{option.name: other_value(option)}), option.name) == other_value(option)
    with pytest.raises((TypeError, NEFTuneError), match=rf"^NEFTune {option.name} must "):
        NEFTuneConfig(**{option.name: "bogus"})


def test_docstrings_document_every_option_with_its_default() -> None:
    pytest.importorskip("transformers")
    from neftune import NEFTuneCallback

    for cls, options in ((NEFTuneConfig, NOISE_OPTIONS), (NEFTuneCallback, CALLBACK_OPTIONS)):
        doc = inspect.getdoc(cls) or ""
        for option in options:
            entry = re.search(rf"^\s*{option.name} \((.*?)\):", doc, flags=re.MULTILINE)
            assert entry is not None, f"{cls.__name__} docstring lacks {option.name}"
            assert documented(option) in entry.group(1), (cls.__name__, option.name, entry.group(1))


def test_callback_signature_matches_the_table() -> None:
    pytest.importorskip("transformers")
    from neftune import NEFTuneCallback

    parameters = inspect.signature(NEFTuneCallback.__init__).parameters
    hints = get_type_hints(NEFTuneCallback.__init__)
    assert parameters["alpha_or_config"].default == ALPHA.default
    keywords = [name for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert keywords == [*(option.name for option in CALLBACK_OPTIONS), "filter_fn"]
    for option in CALLBACK_OPTIONS:
        assert parameters[option.name].default == option.default, option.name
        if option.choices:
            assert get_args(hints[option.name]) == option.choices, option.name
        else:
            assert hints[option.name] == expected_type(option), option.name


@pytest.mark.parametrize("option", CALLBACK_OPTIONS, ids=lambda option: option.name)
def test_callback_keeps_every_value_and_names_the_argument(option: Option[Any]) -> None:
    pytest.importorskip("transformers")
    from neftune import NEFTuneCallback

    assert getattr(NEFTuneCallback(5.0, **{option.name: other_value(option)}), option.name) == other_value(option)
    assert getattr(NEFTuneCallback(5.0), option.name) == option.default
    with pytest.raises((TypeError, NEFTuneError), match=rf"^{option.name} must "):
        NEFTuneCallback(5.0, **{option.name: "bogus"})


def test_sft_config_has_a_field_per_option_with_its_default_help_and_choices() -> None:
    pytest.importorskip("trl")
    from transformers import HfArgumentParser

    from neftune import SFTConfig

    by_name = {field.name: field for field in fields(SFTConfig)}
    hints = get_type_hints(SFTConfig)
    for option in FIELD_OPTIONS:
        field = by_name[option.field_name]
        assert field.default == option.default and field.default_factory is MISSING, option.name
        assert field.metadata["help"].startswith(option.help), option.name
        assert field.metadata.get("choices") == (list(option.choices) if option.choices else None), option.name
        want = option.value_type | None if option is ALPHA else expected_type(option)
        assert hints[option.field_name] == want, option.name
    assert by_name["neftune_noise_alpha"].metadata["help"].endswith("None means the default, 5.")
    (parsed,) = HfArgumentParser(SFTConfig).parse_args_into_dataclasses(["--output_dir", "o", "--use_cpu", "true"])
    assert {option.name: getattr(parsed, option.field_name) for option in FIELD_OPTIONS} == {
        option.name: option.default for option in FIELD_OPTIONS
    }


@pytest.mark.parametrize("option", FIELD_OPTIONS, ids=lambda option: option.name)
def test_sft_config_refuses_a_bad_value_naming_its_field(option: Option[Any], tmp_path: Path) -> None:
    pytest.importorskip("trl")
    from neftune import SFTConfig

    with pytest.raises((TypeError, NEFTuneError), match=rf"^{option.field_name} must "):
        SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **{option.field_name: "bogus"})


def test_every_sft_config_value_reaches_the_noise_config_and_the_callback(tokenizer: Any, tmp_path: Path) -> None:
    pytest.importorskip("trl")
    from neftune import SFTConfig, SFTTrainer
    from neftune.integrations.sft_trainer import neftune_config_from_args, trainer_options_from_args
    from neftune.toy import cpu_training_kwargs, prompt_completion_dataset, tiny_llama_for

    others = {option.field_name: other_value(option) for option in FIELD_OPTIONS if option is not KERNEL}
    others["neftune_kernel"] = "torch"  # "triton" would need Triton
    args = SFTConfig(**cpu_training_kwargs(str(tmp_path)), **others)
    assert neftune_config_from_args(args) == NEFTuneConfig(
        **{option.name: others[option.field_name] for option in NOISE_OPTIONS}
    )
    trainer = SFTTrainer(
        model=tiny_llama_for(tokenizer, 32),
        args=args,
        train_dataset=prompt_completion_dataset(8),
        processing_class=tokenizer,
    )
    assert trainer.neftune_callback.config == neftune_config_from_args(args)
    for option in TRAINER_OPTIONS:
        assert getattr(trainer.neftune_callback, option.name) == others[option.field_name], option.name
    # A plain transformers/TRL config has none of the fields: each option takes its default (alpha None too).
    plain = SimpleNamespace(neftune_noise_alpha=None)
    assert neftune_config_from_args(plain) == NEFTuneConfig()
    assert trainer_options_from_args(plain) == {option.name: option.default for option in TRAINER_OPTIONS}


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in parser._actions for flag in action.option_strings}


def _demo_parser() -> argparse.ArgumentParser:
    from neftune.cli.commands import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = commands.choices["demo"]
    return parser


def _assert_flag_carries(action: argparse.Action, option: Option[Any]) -> None:
    from neftune.cli.commands import option_dest

    assert action.dest == option_dest(option) and action.default == option.default, option.name
    assert action.help is not None and option.help in action.help, option.name
    if option.value_type is bool:
        assert isinstance(action, argparse._StoreFalseAction if option.default else argparse._StoreTrueAction)
    else:
        assert action.type is option.value_type and tuple(action.choices or ()) == option.choices, option.name


def test_cli_flags_carry_the_table() -> None:
    from neftune.cli import run_command

    demo, run = _actions(_demo_parser()), _actions(run_command.build_parser())
    for option in NOISE_OPTIONS:
        _assert_flag_carries(demo[option.flag], option)
        if option is not ALPHA:
            _assert_flag_carries(run[option.flag], option)
    _assert_flag_carries(run[CLEAN_LOSS_STEPS.flag], CLEAN_LOSS_STEPS)
    # `neftune run` without --alpha: each trainer's own neftune_noise_alpha
    assert run[ALPHA.flag].default is None and run[ALPHA.flag].type is float


def test_every_cli_noise_flag_reaches_the_config() -> None:
    from neftune.cli import run_command
    from neftune.cli.commands import config_from_arguments

    others = {option.name: other_value(option) for option in NOISE_OPTIONS}
    argv = [arg for option in NOISE_OPTIONS for arg in cli_argv(option, others[option.name])]
    assert config_from_arguments(_demo_parser().parse_args(argv)) == NEFTuneConfig(**others)
    assert config_from_arguments(run_command.build_parser().parse_args(argv)) == NEFTuneConfig(**others)
    assert config_from_arguments(_demo_parser().parse_args([])) == NEFTuneConfig()


def _run_with_patch_recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str]) -> list[Any]:
    from neftune.cli import run_command
    from neftune.integrations import transformers_patch

    calls: list[Any] = []
    monkeypatch.setattr(transformers_patch, "patch_transformers", lambda *a, **k: calls.append((a, k)))
    script = tmp_path / "target.py"
    script.write_text("")
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert run_command.main([*argv, "--", str(script)]) == 0
    return calls


def test_neftune_run_passes_every_noise_flag_kernel_included(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _run_with_patch_recorded(
        monkeypatch, tmp_path, ["--alpha", "2", "--kernel", "torch", "--noise", "gaussian", "--clean-loss-steps", "4"]
    )
    assert calls == [((NEFTuneConfig(alpha=2.0, kernel="torch", noise="gaussian"),), {"clean_loss_steps": 4})]
    assert _run_with_patch_recorded(monkeypatch, tmp_path, []) == [((None,), {"clean_loss_steps": None})]


def test_neftune_run_refuses_noise_flags_without_alpha(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _run_with_patch_recorded(monkeypatch, tmp_path, ["--scaling", "padded", "--kernel", "torch"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(
        "neftune run: error: --scaling --kernel without --alpha: the noise flags set the noise of every trainer"
    )
    with pytest.raises(NEFTuneError, match=r"^--clean-loss-steps must be >= 1 or None, got 0"):
        _run_with_patch_recorded(monkeypatch, tmp_path, ["--clean-loss-steps", "0"])


def test_axolotl_schema_has_a_field_per_option_and_checks_choices() -> None:
    pydantic = pytest.importorskip("pydantic")
    from neftune.integrations.axolotl import NEFTuneArgs

    assert list(NEFTuneArgs.model_fields) == [option.field_name for option in YAML_OPTIONS]
    assert NEFTuneArgs().model_dump() == dict.fromkeys(option.field_name for option in YAML_OPTIONS)
    others = {option.field_name: other_value(option) for option in YAML_OPTIONS}
    assert NEFTuneArgs(**others).model_dump() == others
    for option in YAML_OPTIONS:
        if option.choices:
            with pytest.raises(pydantic.ValidationError, match=option.field_name):
                NEFTuneArgs(**{option.field_name: "bogus"})


def test_every_axolotl_option_reaches_the_config_and_the_callback() -> None:
    pytest.importorskip("transformers")
    from neftune.integrations.axolotl import NEFTunePlugin, config_from_cfg

    cfg = {ALPHA.field_name: 2.0, **{option.field_name: other_value(option) for option in YAML_OPTIONS}}
    noise = {option.name: cfg[option.field_name] for option in NOISE_OPTIONS}
    assert config_from_cfg(cfg) == NEFTuneConfig(**noise)
    added: list[Any] = []
    trainer = SimpleNamespace(
        neftune_noise_alpha=2.0,
        add_callback=added.append,
        pop_callback=lambda callback: None,
        callback_handler=SimpleNamespace(callbacks=[]),
    )
    NEFTunePlugin().post_trainer_create(cfg, trainer)
    (callback,) = added
    assert callback.config == NEFTuneConfig(**noise) and trainer.neftune_noise_alpha is None
    for option in TRAINER_OPTIONS:
        assert getattr(callback, option.name) == cfg[option.field_name], option.name
    with pytest.raises(NEFTuneError, match=r"^axolotl config: neftune_clean_loss_samples must be >= 1, got 0"):
        NEFTunePlugin().post_trainer_create({**cfg, "neftune_clean_loss_samples": 0}, trainer)


def _readme_row(start: str) -> str:
    rows = [line for line in README.read_text().splitlines() if line.startswith(f"| {start}")]
    assert len(rows) == 1, start
    return rows[0]


def test_readme_api_table_lists_every_option_with_its_default() -> None:
    signature = ", ".join(f"{option.name}={as_python(option.default)}" for option in NOISE_OPTIONS)
    assert f"| `NEFTuneConfig({signature})` |" in _readme_row("`NEFTuneConfig(")
    callback_row = _readme_row("`NEFTuneCallback(")
    for option in CALLBACK_OPTIONS:
        assert f"{option.name}={as_python(option.default)}" in callback_row, option.name
    sft_row = _readme_row("`SFTTrainer`, `SFTConfig`")
    assert re.findall(r"`(neftune_\w+)`", sft_row) == [option.field_name for option in FIELD_OPTIONS]
    assert f"`neftune_noise_alpha` ({ALPHA.default})" in sft_row


def test_readme_axolotl_yaml_lists_every_plugin_option() -> None:
    text = README.read_text()
    comment = text[text.index("# optional: neftune_") :].split("```")[0]
    assert re.findall(r"neftune_\w+", comment) == [option.field_name for option in YAML_OPTIONS]
