"""Paths that once added no noise or the wrong value silently: PEFT after apply, replaced embeddings, schedules in
the logs, overflowing alphas, pads that look like 1-token sequences, alpha ported from transformers' flag."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import padding_mask, tiny_llama

from neftune import NEFTuneConfig, NEFTuneError, apply_neftune, disable_noise, is_neftune_active

peft = pytest.importorskip("peft")
ALPHA = 5.0
HIDDEN = 32


def layer_input_noise(model: torch.nn.Module, layer: torch.nn.Module, **batch: Any) -> torch.Tensor:
    """What the first decoder layer receives in training minus the same call with the noise suspended."""
    seen: list[torch.Tensor] = []

    def record(module: Any, args: Any, kwargs: Any) -> None:
        seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    handle = layer.register_forward_pre_hook(record, with_kwargs=True)
    model.train()
    with torch.no_grad():
        model(**batch)
        with disable_noise(model):
            model(**batch)
    handle.remove()
    return (seen[0] - seen[1]).double()


def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 128, (3, 12), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": padding_mask([12, 7, 3], 12)}


def assert_row_bounds(noise: torch.Tensor, mask: torch.Tensor, alpha: float = ALPHA) -> None:
    for row in range(noise.shape[0]):
        length = int(mask[row].sum())
        bound = alpha / math.sqrt(length * HIDDEN)
        real = noise[row][mask[row] == 1]
        assert real.abs().max() <= bound * (1 + 1e-4)
        assert real.abs().max() >= 0.97 * bound
        assert (noise[row][mask[row] == 0] == 0).all()


# --- 4. apply_neftune before PEFT wraps the embedding ------------------------------------------------------------


def test_applied_before_trainable_tokens_the_wrapper_is_noised() -> None:
    if "trainable_token_indices" not in peft.LoraConfig.__dataclass_fields__:
        pytest.skip(f"peft {peft.__version__} has no trainable_token_indices (peft >= 0.15)")
    base = tiny_llama()
    handle = apply_neftune(base, ALPHA)
    config = peft.LoraConfig(r=4, target_modules=["q_proj"], trainable_token_indices=[1, 2])
    model = peft.get_peft_model(base, config)
    wrapper = model.base_model.model.model.embed_tokens
    assert type(wrapper).__name__ == "TrainableTokensWrapper"
    noise = layer_input_noise(model, model.base_model.model.model.layers[0], **batch())
    assert_row_bounds(noise, batch()["attention_mask"])
    assert handle.modules == (wrapper,) and handle.active and is_neftune_active(model)
    assert handle.remove() == 1 and not is_neftune_active(model)


def _lora_on_embedding(base: torch.nn.Module) -> Any:
    config = peft.LoraConfig(r=4, target_modules=["embed_tokens"], init_lora_weights=False)
    return peft.get_peft_model(base, config)


def test_applied_before_lora_on_the_embedding_equals_applied_after() -> None:
    outputs = []
    for order in ("before", "after"):
        base = tiny_llama()
        if order == "before":
            apply_neftune(base, ALPHA)
            model = _lora_on_embedding(base)
        else:
            model = _lora_on_embedding(base)
            apply_neftune(model, ALPHA)
        layer = model.base_model.model.model.layers[0]
        handle = layer.register_forward_pre_hook(lambda _m, args, kwargs: outputs.append(args[0]), with_kwargs=True)
        model.train()
        torch.manual_seed(3)
        with torch.no_grad():
            model(**batch())
        handle.remove()
    assert torch.equal(outputs[0], outputs[1])  # same draw, added after the adapter's delta in both orders


def test_merge_and_unload_leaves_the_handle_inactive() -> None:
    model = _lora_on_embedding(tiny_llama())
    handle = apply_neftune(model, ALPHA)
    assert handle.active
    merged = model.merge_and_unload()
    assert not handle.active
    assert not is_neftune_active(merged)


def test_a_replaced_embedding_is_an_error_in_training_not_a_silent_no_op() -> None:
    model = tiny_llama()
    handle = apply_neftune(model, ALPHA)
    model.set_input_embeddings(torch.nn.Embedding(128, HIDDEN))
    assert not handle.active
    model.eval()
    with torch.no_grad():
        model(**batch())  # no noise is due in eval mode: nothing to refuse
    model.train()
    with pytest.raises(NEFTuneError, match=r"'model\.embed_tokens'.*set_input_embeddings.*apply_neftune again"):
        model(**batch())


# --- 5. The logged alpha under a schedule ------------------------------------------------------------------------


@pytest.mark.parametrize("log_stats", [True, False])
def test_logged_alpha_is_the_alpha_in_force(tokenizer: Any, tmp_path: Path, log_stats: bool) -> None:
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from neftune import NEFTuneCallback
    from neftune.toy import cpu_training_kwargs, language_modeling_dataset, tiny_llama_for

    callback = NEFTuneCallback(NEFTuneConfig(alpha=8.0, schedule="linear"), log_stats=log_stats)
    trainer = Trainer(
        model=tiny_llama_for(tokenizer),
        args=TrainingArguments(**cpu_training_kwargs(str(tmp_path), max_steps=4, logging_steps=2)),
        train_dataset=language_modeling_dataset(tokenizer, rows=16),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=[callback],
    )
    trainer.train()
    logged = [entry["neftune/alpha"] for entry in trainer.state.log_history if "neftune/alpha" in entry]
    # progress when logging at steps 2 and 4 is the step about to run last: 1/4 and 3/4 of training
    assert logged == pytest.approx([8.0 * (1 - 1 / 4), 8.0 * (1 - 3 / 4)])


# --- 7. Alphas that overflow -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alpha", "shown"), [(1e40, r"got 1e\+40"), (10**400, "an integer of 401 digits")], ids=["1e40", "10**400"]
)
def test_alphas_beyond_float32_are_refused(alpha: float, shown: str) -> None:
    with pytest.raises(NEFTuneError, match=rf"finite in float32 .*{shown}"):
        NEFTuneConfig(alpha=alpha)
    with pytest.raises(NEFTuneError, match="finite in float32"):
        apply_neftune(tiny_llama(), alpha)


def test_the_largest_float32_alpha_gives_finite_noise_and_zero_padding() -> None:
    model = tiny_llama()
    apply_neftune(model, 3e38)
    noise = layer_input_noise(model, model.model.layers[0], **batch())
    mask = batch()["attention_mask"]
    assert torch.isfinite(noise).all()
    assert (noise[mask == 0] == 0).all()


# --- 8. Pads that look like 1-token sequences --------------------------------------------------------------------


def _padding_free_batch(multiple: int) -> dict[str, torch.Tensor]:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    generator = torch.Generator().manual_seed(1)
    examples = [{"input_ids": torch.randint(3, 128, (n,), generator=generator).tolist()} for n in (9, 4, 6)]
    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True, pad_to_multiple_of=multiple)
    collated = collator(examples)
    return {key: collated[key] for key in ("input_ids", "position_ids")}


def _assert_segments(noise: torch.Tensor, lengths: list[int], total: int) -> None:
    start = 0
    for length in lengths:
        segment = noise[0, start : start + length]
        bound = ALPHA / math.sqrt(length * HIDDEN)
        assert segment.abs().max() <= bound * (1 + 1e-4)
        assert segment.abs().max() >= 0.97 * bound
        start += length
    assert (noise[0, start:total] == 0).all()  # every pad: exactly zero


def test_trl_padding_free_pads_get_no_noise() -> None:
    inputs = _padding_free_batch(multiple=32)
    if inputs["input_ids"].shape[1] == 19:
        pytest.skip("this TRL's padding-free collator ignores pad_to_multiple_of: no pads to test")
    assert inputs["input_ids"].shape == (1, 32) and (inputs["position_ids"][0, 19:] == 0).all()
    model = tiny_llama()
    handle = apply_neftune(model, ALPHA, track_stats=True)
    noise = layer_input_noise(model, model.model.layers[0], **inputs)
    _assert_segments(noise, [9, 4, 6], 32)
    # the stats count real tokens only: noise_rms matches the measured noise over the 19 real tokens
    handle.read_stats()
    model.train()
    with torch.no_grad():
        model(**inputs)
    stats = handle.read_stats()
    expected_rms = math.sqrt(sum(ALPHA**2 / (n * HIDDEN) / 3 * n for n in (9, 4, 6)) / 19)
    assert stats.noise_rms == pytest.approx(expected_rms, rel=0.1)


def test_llamafactory_style_packing_pads_get_no_noise() -> None:
    """Packed rows padded with pad ids, position id 0 and attention mask 1."""
    generator = torch.Generator().manual_seed(2)
    real = torch.randint(3, 128, (1, 15), generator=generator)
    input_ids = torch.cat([real, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    position_ids = torch.cat([torch.arange(10), torch.arange(5), torch.zeros(5, dtype=torch.long)])[None]
    model = tiny_llama()
    apply_neftune(model, ALPHA)
    noise = layer_input_noise(
        model, model.model.layers[0], input_ids=input_ids, position_ids=position_ids, attention_mask=torch.ones(1, 20)
    )
    _assert_segments(noise, [10, 5], 20)


@pytest.mark.parametrize("boundaries", ["position_ids", "cu_seq_lens_q"])
def test_axolotl_style_pad_tail_with_restarting_positions_gets_no_noise(boundaries: str) -> None:
    """axolotl's multipack collator pads with pad ids at positions 0, 1, 2, ... and no attention mask: the tail
    looks like one more sequence (its own segment in cu_seq_lens_q too), but holds only pad ids."""
    real = torch.randint(3, 128, (1, 14), generator=torch.Generator().manual_seed(4))
    input_ids = torch.cat([real, torch.zeros(1, 6, dtype=torch.long)], dim=1)
    position_ids = torch.cat([torch.arange(9), torch.arange(5), torch.arange(6)])[None]
    layout = {"position_ids": position_ids}
    if boundaries == "cu_seq_lens_q":
        layout["cu_seq_lens_q"] = torch.tensor([0, 9, 14, 20], dtype=torch.int32)
    model = tiny_llama()
    apply_neftune(model, ALPHA)
    noise = layer_input_noise(model, model.model.layers[0], input_ids=input_ids, **layout)
    _assert_segments(noise, [9, 5], 20)


def test_a_pad_id_inside_a_longer_sequence_stays_real() -> None:
    """pad = eos: the eos ending a packed sequence is a real token of that sequence."""
    ids = torch.randint(3, 128, (1, 12), generator=torch.Generator().manual_seed(3))
    ids[0, 7] = 0  # the last token of the first sequence is the pad id
    position_ids = torch.cat([torch.arange(8), torch.arange(4)])[None]
    model = tiny_llama()
    apply_neftune(model, ALPHA)
    noise = layer_input_noise(model, model.model.layers[0], input_ids=ids, position_ids=position_ids)
    _assert_segments(noise, [8, 4], 12)


# --- Porting alpha from transformers' flag -----------------------------------------------------------------------


def test_the_log_line_gives_the_factor_to_port_alpha_on_scaled_embeddings(caplog: pytest.LogCaptureFixture) -> None:
    from support_matrix import FAMILIES

    gemma = next(family for family in FAMILIES if family.name == "Gemma")
    model = gemma.build()
    with caplog.at_level(logging.INFO, logger="neftune"):
        apply_neftune(model, ALPHA)
    (line,) = [record.getMessage() for record in caplog.records if "NEFTune active" in record.getMessage()]
    if getattr(model.get_input_embeddings(), "embed_scale", None) is None:
        # transformers 4: Gemma scales outside the embedding module, after both hooks: the same noise, no factor
        assert "transformers' hook" not in line
    else:
        assert "adds 8x the noise of transformers' hook" in line and "use alpha 0.625 for the same noise" in line
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="neftune"):
        apply_neftune(tiny_llama(), ALPHA)
    (line,) = [record.getMessage() for record in caplog.records if "NEFTune active" in record.getMessage()]
    assert "transformers' hook" not in line and "alpha 5, per_sequence" in line
