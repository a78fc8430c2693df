"""The drop-in `neftune.SFTTrainer` / `SFTConfig` on real TRL with a tiny Llama."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("trl")
import trl
from transformers import HfArgumentParser, TrainerCallback

import neftune
from neftune import NEFTuneError, SFTConfig, SFTTrainer, is_neftune_active
from neftune.installed_hooks import noise_hooks
from neftune.integrations.clean_loss import CleanLossProbe
from neftune.toy import conversational_dataset, cpu_training_kwargs, prompt_completion_dataset, tiny_llama_for

HIDDEN = 32
NOISE_KEYS = {
    "neftune/alpha",
    "neftune/noise_rms",
    "neftune/embed_rms",
    "neftune/noise_to_signal",
    "neftune/noised_calls",
}


class Probe(TrainerCallback):
    """Records, at every step end, what hooks the model carries; can raise at a given step."""

    def __init__(self, raise_at: int | None = None) -> None:
        self.raise_at = raise_at
        self.active: list[bool] = []
        self.noise_hook_count: list[int] = []
        self.transformers_hook: list[bool] = []

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.active.append(is_neftune_active(model))
        self.noise_hook_count.append(sum(1 for m in model.modules() for _ in noise_hooks(m)))
        self.transformers_hook.append(
            any(
                "neftune_noise_alpha" in vars(m)
                or any(getattr(h, "__name__", "") == "neftune_post_forward_hook" for h in m._forward_hooks.values())
                for m in model.modules()
            )
        )
        if self.raise_at is not None and state.global_step == self.raise_at:
            raise RuntimeError("training failed on purpose")


def make_trainer(
    tokenizer: Any,
    tmp_path: Path,
    config_cls: Any = SFTConfig,
    data: Any = None,
    probe: Probe | None = None,
    eval_data: Any = None,
    **kw: Any,
) -> SFTTrainer:
    training = cpu_training_kwargs(str(tmp_path))
    training.update(kw)
    args = config_cls(**training)
    return SFTTrainer(
        model=tiny_llama_for(tokenizer, HIDDEN),
        args=args,
        train_dataset=data if data is not None else prompt_completion_dataset(32),
        eval_dataset=eval_data,
        processing_class=tokenizer,
        callbacks=[probe] if probe else None,
    )


def sequence_length_range(trainer: SFTTrainer) -> tuple[int, int]:
    """Shortest and longest training sequence (packed datasets keep them in `seq_lengths`)."""
    data = trainer.train_dataset
    if "seq_lengths" in data.column_names:
        lengths = [n for row in data["seq_lengths"] for n in row]
    else:
        lengths = [len(ids) for ids in data["input_ids"]]
    return min(lengths), max(lengths)


def skip_without_packed_boundaries(trainer: SFTTrainer) -> None:
    """TRL < 1 gives packed batches position_ids only under flash attention: on CPU (sdpa) a packed row is one
    sequence to the model and to any NEFTune, and there is no per-sequence length to test."""
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    if "position_ids" not in batch and "cu_seq_lens_q" not in batch:
        pytest.skip("this TRL passes no sequence boundaries for packed rows without flash attention")


def noise_logs(trainer: SFTTrainer) -> list[dict[str, float]]:
    return [entry for entry in trainer.state.log_history if "neftune/noise_rms" in entry]


def _boundary_warnings(trainer: SFTTrainer) -> list[str]:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    return [str(w.message) for w in caught if "carry no sequence boundaries" in str(w.message)]


def _strip_boundaries(trainer: SFTTrainer) -> None:
    """Packed batches as TRL 0.19-0.22 without flash attention, or packing_strategy='wrapped', give them: rows
    with an all-ones attention mask and no position_ids or cu_seq_lens."""
    collate = trainer.data_collator

    def without_boundaries(rows: list[Any]) -> Any:
        batch = collate(rows)
        for key in ("position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx"):
            batch.pop(key, None)
        batch.setdefault("attention_mask", torch.ones_like(batch["input_ids"]))
        return batch

    trainer.data_collator = without_boundaries


@pytest.mark.parametrize("strip", [False, True])
def test_packed_rows_without_boundaries_warn_once(tokenizer: Any, tmp_path: Path, strip: bool) -> None:
    """Whatever this TRL gives: a warning exactly when the packed batches carry no position_ids/cu_seq_lens_q."""
    trainer = make_trainer(tokenizer, tmp_path, packing=True, max_steps=3)
    if strip:
        _strip_boundaries(trainer)
    sample = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    has_boundaries = "position_ids" in sample or "cu_seq_lens_q" in sample
    if strip:
        assert not has_boundaries
    found = _boundary_warnings(trainer)
    assert len(found) == (0 if has_boundaries else 1), found
    if found:
        assert "NEFTune's L is the row's length" in found[0] and "packing_strategy='bfd'" in found[0]


def test_unpacked_batches_and_alpha_zero_never_warn_about_boundaries(tokenizer: Any, tmp_path: Path) -> None:
    assert _boundary_warnings(make_trainer(tokenizer, tmp_path / "a", packing=False, max_steps=2)) == []
    trainer = make_trainer(tokenizer, tmp_path / "b", packing=True, max_steps=2, neftune_noise_alpha=0.0)
    _strip_boundaries(trainer)
    assert _boundary_warnings(trainer) == []


def test_padding_free_rows_without_boundaries_warn_once(tokenizer: Any, tmp_path: Path) -> None:
    """padding_free=True flattens each batch into one row, packed or not (TRL 0.19 without flash attention gives it
    no position_ids): the same one-sequence row as unbounded packing."""
    trainer = make_trainer(tokenizer, tmp_path, packing=False, padding_free=True, max_length=None, max_steps=2)
    _strip_boundaries(trainer)
    found = _boundary_warnings(trainer)
    assert len(found) == 1, found
    assert found[0].startswith(f"NEFTune: padding_free=True with TRL {trl.__version__}, but")


def test_a_collator_giving_cu_seqlens_only_does_not_warn(tokenizer: Any, tmp_path: Path) -> None:
    """neftune reads boundaries from `cu_seqlens` too (model_families.CU_SEQLENS_NAMES): no false alarm."""
    trainer = make_trainer(tokenizer, tmp_path, packing=True, max_steps=2)
    _strip_boundaries(trainer)
    stripped = trainer.data_collator

    def with_cu_seqlens(rows: list[Any]) -> Any:
        batch = stripped(rows)
        batch["cu_seqlens"] = torch.tensor([0, batch["input_ids"].shape[1]], dtype=torch.int32)
        return batch

    trainer.data_collator = with_cu_seqlens
    # the model does not take cu_seqlens: the batch is checked, then the key is dropped before the forward
    original = trainer.compute_loss

    def compute_loss(model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        inputs.pop("cu_seqlens", None)
        return original(model, inputs, *args, **kwargs)

    trainer.compute_loss = compute_loss
    assert _boundary_warnings(trainer) == []


@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("data", ["prompt_completion", "conversational"])
def test_swapping_the_import_gives_paper_noise_during_train_only(
    tokenizer: Any, tmp_path: Path, packing: bool, data: str
) -> None:
    dataset = prompt_completion_dataset(32) if data == "prompt_completion" else conversational_dataset(32)
    probe = Probe()
    trainer = make_trainer(tokenizer, tmp_path, data=dataset, probe=probe, packing=packing)
    if packing:
        skip_without_packed_boundaries(trainer)
    assert trainer.neftune_callback.config.alpha == 5.0
    assert not is_neftune_active(trainer.model)
    trainer.train()
    assert probe.active == [True] * 6 and probe.noise_hook_count == [1] * 6
    assert not any(probe.transformers_hook)
    assert not is_neftune_active(trainer.model)
    logs = noise_logs(trainer)
    assert [entry["step"] for entry in logs] == [2, 4, 6]
    shortest, longest = sequence_length_range(trainer)
    for entry in logs:
        assert NOISE_KEYS <= entry.keys()
        assert entry["neftune/alpha"] == 5.0
        assert entry["neftune/noised_calls"] == 2.0  # one training forward per step, 2 steps per log
        # Uniform noise of magnitude alpha/sqrt(L d) has RMS alpha/sqrt(3 L d); averaged over sequences of
        # lengths in [shortest, longest] it lies between the two extremes -- packed or not.
        assert (
            5.0 / math.sqrt(3 * longest * HIDDEN)
            <= entry["neftune/noise_rms"]
            <= 5.0 / math.sqrt(3 * shortest * HIDDEN)
        )
        assert entry["neftune/noise_to_signal"] == pytest.approx(
            entry["neftune/noise_rms"] / entry["neftune/embed_rms"]
        )
        assert 0.015 < entry["neftune/embed_rms"] < 0.025  # Llama init: std 0.02


def test_padded_scaling_under_packing_shrinks_the_noise_by_the_row_length(tokenizer: Any, tmp_path: Path) -> None:
    """The transformers behaviour, reproduced on request: one packed row counts as a single long sequence."""
    trainer = make_trainer(tokenizer, tmp_path, packing=True, neftune_scaling="padded")
    skip_without_packed_boundaries(trainer)
    trainer.train()
    _, longest = sequence_length_range(trainer)
    for entry in noise_logs(trainer):
        assert entry["neftune/noise_rms"] < 0.5 * 5.0 / math.sqrt(3 * longest * HIDDEN)


def test_plain_trl_config_with_alpha_is_taken_over_never_doubled(
    tokenizer: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    probe = Probe()
    with caplog.at_level(logging.INFO, logger="neftune"):
        trainer = make_trainer(tokenizer, tmp_path, config_cls=trl.SFTConfig, probe=probe, neftune_noise_alpha=10.0)
    assert "neftune's implementation is active (alpha=10.0 from neftune_noise_alpha of the config" in caplog.text
    assert "transformers' own neftune_post_forward_hook is disabled" in caplog.text
    trainer.train()
    assert probe.noise_hook_count == [1] * 6 and not any(probe.transformers_hook)
    assert all(entry["neftune/alpha"] == 10.0 for entry in noise_logs(trainer))


def test_plain_trl_config_without_alpha_gets_the_default(tokenizer: Any, tmp_path: Path) -> None:
    trainer = make_trainer(tokenizer, tmp_path, config_cls=trl.SFTConfig)
    assert trainer.neftune_callback.config.alpha == 5.0


def test_alpha_zero_turns_it_off(tokenizer: Any, tmp_path: Path) -> None:
    probe = Probe()
    with pytest.warns(UserWarning, match="alpha is 0"):
        trainer = make_trainer(tokenizer, tmp_path, probe=probe, neftune_noise_alpha=0.0)
        trainer.train()
    assert probe.active == [False] * 6
    assert noise_logs(trainer) == []


def test_hooks_removed_when_training_raises(tokenizer: Any, tmp_path: Path) -> None:
    probe = Probe(raise_at=3)
    trainer = make_trainer(tokenizer, tmp_path, probe=probe)
    with pytest.raises(RuntimeError, match="on purpose"):
        trainer.train()
    assert probe.active == [True] * 3
    assert not is_neftune_active(trainer.model)


def test_evaluation_predict_and_generation_see_clean_embeddings(tokenizer: Any, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []

    class EvalProbe(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            counts = trainer.neftune_callback.handle.counts
            seen.append((counts.noised, counts.eval_mode))

        def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            counts = trainer.neftune_callback.handle.counts
            seen.append((counts.noised, counts.eval_mode))

    eval_data = prompt_completion_dataset(8, seed=1)
    trainer = make_trainer(tokenizer, tmp_path, eval_data=eval_data, eval_strategy="steps", eval_steps=3)
    trainer.add_callback(EvalProbe())
    trainer.train()
    # step 3 end -> evaluate: no new noised call, only eval-mode calls
    step3, after_eval = seen[2], seen[3]
    assert after_eval[0] == step3[0] and after_eval[1] > step3[1]
    assert not is_neftune_active(trainer.model)
    trainer.model.eval()
    prompt = tokenizer("What do bees make? ", return_tensors="pt")
    first = trainer.model.generate(**prompt, max_new_tokens=5, do_sample=False)
    again = trainer.model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert torch.equal(first, again)


def test_train_again_and_resume_from_checkpoint(tokenizer: Any, tmp_path: Path) -> None:
    trainer = make_trainer(tokenizer, tmp_path, save_strategy="steps", save_steps=3)
    trainer.train()
    checkpoint = tmp_path / "checkpoint-6"
    assert checkpoint.is_dir()
    probe = Probe()
    resumed = make_trainer(tokenizer, tmp_path, probe=probe, max_steps=8)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert probe.noise_hook_count == [1, 1]
    assert noise_logs(resumed)[-1]["step"] == 8
    assert not is_neftune_active(resumed.model)


def test_clean_training_loss_is_logged_and_exact(tokenizer: Any, tmp_path: Path) -> None:
    trainer = make_trainer(tokenizer, tmp_path, neftune_clean_loss_steps=3, neftune_clean_loss_samples=8)
    trainer.train()
    clean = [
        (e["step"], e["neftune/clean_train_loss"])
        for e in trainer.state.log_history
        if "neftune/clean_train_loss" in e
    ]
    assert [step for step, _ in clean] == [3, 6]
    loader = trainer.get_train_dataloader()
    probe = CleanLossProbe.from_data(loader.dataset, loader.collate_fn, 8, trainer.args.per_device_train_batch_size)
    assert probe.loss(trainer.model) == pytest.approx(clean[-1][1], rel=1e-6)
    assert all(math.isfinite(value) and value > 0 for _, value in clean)


def test_config_fields_parse_from_the_command_line_with_help() -> None:
    parser = HfArgumentParser(SFTConfig)
    (args,) = parser.parse_args_into_dataclasses(
        [
            "--output_dir",
            "/tmp/x",
            "--neftune_noise_alpha",
            "10",
            "--neftune_scaling",
            "padded",
            "--neftune_clean_loss_steps",
            "50",
            "--bf16",
            "false",
        ]
    )
    assert (args.neftune_noise_alpha, args.neftune_scaling, args.neftune_clean_loss_steps) == (10.0, "padded", 50)
    help_text = parser.format_help()
    for name in ["neftune_scaling", "neftune_clean_loss_steps", "neftune_clean_loss_samples", "neftune_log_stats"]:
        assert name in help_text
    assert "{per_sequence,padded}" in help_text
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(["--output_dir", "/tmp/x", "--neftune_scaling", "batch"])


def test_config_validation_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(NEFTuneError, match=r"neftune_noise_alpha must be >= 0, got -1\.0"):
        SFTConfig(output_dir=str(tmp_path), neftune_noise_alpha=-1.0, bf16=False)
    with pytest.raises(NEFTuneError, match="neftune_scaling must be one of"):
        SFTConfig(output_dir=str(tmp_path), neftune_scaling="batch", bf16=False)
    with pytest.raises(NEFTuneError, match=r"neftune_noise must be one of \('uniform', 'gaussian', 'symmetric'\)"):
        SFTConfig(output_dir=str(tmp_path), neftune_noise="laplace", bf16=False)
    with pytest.raises(NEFTuneError, match=r"neftune_schedule_warmup must be a fraction of training in \[0, 1\)"):
        SFTConfig(output_dir=str(tmp_path), neftune_schedule_warmup=2.0, bf16=False)
    assert SFTConfig(output_dir=str(tmp_path), bf16=False).neftune_noise_alpha == 5.0


def test_every_noise_option_reaches_the_trainer(tokenizer: Any, tmp_path: Path) -> None:
    trainer = make_trainer(
        tokenizer,
        tmp_path,
        neftune_noise="symmetric",
        neftune_schedule="linear",
        neftune_schedule_warmup=0.25,
        neftune_seed=3,
        neftune_scaling="padded",
    )
    assert trainer.neftune_callback.config == neftune.NEFTuneConfig(
        alpha=5.0, scaling="padded", noise="symmetric", schedule="linear", schedule_warmup=0.25, seed=3
    )
    trainer.train()
    alphas = [entry["neftune/alpha"] for entry in noise_logs(trainer)]
    # 6 steps, warm-up over the first 1.5: alpha at the start of steps 2, 4, 6 (progress 1/6, 3/6, 5/6)
    expected = [5.0 * (1 / 6) / 0.25, 5.0 * (1 - (3 / 6 - 0.25) / 0.75), 5.0 * (1 - (5 / 6 - 0.25) / 0.75)]
    assert alphas == pytest.approx(expected)


def test_aliases_and_lazy_names() -> None:
    import neftune.trl

    assert neftune.SFTTrainer is neftune.trl.SFTTrainer is neftune.NEFTuneSFTTrainer
    assert neftune.SFTConfig is neftune.trl.SFTConfig is neftune.NEFTuneSFTConfig
    assert issubclass(neftune.SFTTrainer, trl.SFTTrainer) and issubclass(neftune.SFTConfig, trl.SFTConfig)
