"""The set-up `neftune sft` and `neftune sweep` share: a fresh seeded model, the pairs as a dataset, the LoRA
adapter."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("datasets")
pytest.importorskip("peft")
import peft

from neftune.sweep.data import embedded_pairs
from neftune.sweep.models import load_model, load_tokenizer, lora_config, sft_trainer_inputs

PAIRS = embedded_pairs(6)


def test_lora_config_is_rank_r_alpha_2r_on_every_linear_layer() -> None:
    config = lora_config(8)
    assert isinstance(config, peft.LoraConfig)
    assert (config.r, config.lora_alpha, config.target_modules, config.task_type) == (8, 16, "all-linear", "CAUSAL_LM")


def test_inputs_hold_a_seeded_model_the_pairs_and_the_adapter() -> None:
    tokenizer = load_tokenizer(None, [p + c for p, c in PAIRS])
    full = sft_trainer_inputs(None, tokenizer, PAIRS, seed=3, lora_rank=None)
    assert sorted(full) == ["model", "peft_config", "processing_class", "train_dataset"]
    assert full["peft_config"] is None and full["processing_class"] is tokenizer
    assert full["train_dataset"].to_list() == [{"prompt": p, "completion": c} for p, c in PAIRS]
    reference = load_model(None, tokenizer, seed=3).state_dict()
    weights = full["model"].state_dict()
    assert weights.keys() == reference.keys()
    assert all(torch.equal(weights[name], reference[name]) for name in reference)
    other_seed = load_model(None, tokenizer, seed=4).get_input_embeddings().weight
    assert not torch.equal(full["model"].get_input_embeddings().weight, other_seed)
    lora = sft_trainer_inputs(None, tokenizer, PAIRS, seed=3, lora_rank=4)
    assert (lora["peft_config"].r, lora["peft_config"].lora_alpha) == (4, 8)
