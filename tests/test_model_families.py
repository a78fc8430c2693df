"""`neftune.model_families` agrees with the support matrix (tests/support_matrix.py); its helpers read quirks right."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from support_matrix import ALPHA, FAMILIES, Family
from torch import nn

from neftune import apply_neftune
from neftune.model_families import (
    FAMILY_QUIRKS,
    Quirk,
    Stacks,
    embed_scale,
    embed_scale_factor,
    embedding_scale_source,
    encoder_decoder_stacks,
    packing_position_ids,
    pad_token_id,
    placeholder_token_ids,
    text_config,
)

BY_NAME = {family.name: family for family in FAMILIES}
needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="the matrix families are transformers models"
)


def test_every_row_names_a_matrix_family() -> None:
    assert set(FAMILY_QUIRKS) - set(BY_NAME) == set()


def test_every_quirk_is_listed_for_some_matrix_family() -> None:
    listed = set().union(*FAMILY_QUIRKS.values())
    assert listed == set(Quirk)


def test_matrix_flags_follow_the_table() -> None:
    """The matrix's `encoder_decoder` / `vision` rows are the table's encoder-decoder / placeholder families."""
    for family in FAMILIES:
        quirks = FAMILY_QUIRKS.get(family.name, frozenset())
        assert family.encoder_decoder == (Quirk.ENCODER_DECODER in quirks), family.name
        assert family.vision == (Quirk.PLACEHOLDER_TOKENS in quirks), family.name


def _uses_mrope(config: Any) -> bool:
    """Qwen2-VL's M-RoPE, seen in its rope options (`rope_parameters` in transformers 5, `rope_scaling` before)."""
    for options in (getattr(config, "rope_parameters", None), getattr(config, "rope_scaling", None)):
        if isinstance(options, dict) and "mrope_section" in options:
            return True
    return False


def detected_quirks(family: Family) -> frozenset[Quirk]:
    """The quirks the module's own functions find on the family's built model."""
    model = family.build()
    found = set()
    handle = apply_neftune(model, ALPHA)
    sources = [embedding_scale_source(module) for module in handle.modules]
    if any(source is not None for source in sources):
        found.add(Quirk.SCALED_EMBEDDING)
        # the factor the noise is scaled by is the multiplier the matrix measures the bound with
        assert [embed_scale_factor(module) for module in handle.modules] == pytest.approx(
            [family.scale] * len(sources)
        )
    else:
        assert all(embed_scale_factor(module) == 1.0 for module in handle.modules)  # Granite: scaled outside
    handle.remove()
    stacks = encoder_decoder_stacks(model)
    if stacks is not None:
        found.add(Quirk.ENCODER_DECODER)
        encoder_weight = stacks.encoder.get_input_embeddings().weight
        if encoder_weight is stacks.decoder.get_input_embeddings().weight is model.get_input_embeddings().weight:
            found.add(Quirk.SHARED_EMBEDDING)
    if placeholder_token_ids(model.config):
        found.add(Quirk.PLACEHOLDER_TOKENS)
    if text_config(model.config) is not model.config:
        found.add(Quirk.TEXT_SUB_CONFIG)
    if _uses_mrope(text_config(model.config)):
        found.add(Quirk.MULTI_AXIS_POSITION_IDS)
    return frozenset(found)


@needs_transformers
@pytest.mark.parametrize("family", FAMILIES, ids=[family.name for family in FAMILIES])
def test_each_family_has_exactly_the_quirks_of_its_row(family: Family) -> None:
    import transformers

    detected = detected_quirks(family)
    expected = FAMILY_QUIRKS.get(family.name, frozenset())
    if int(transformers.__version__.split(".")[0]) >= 5:
        assert detected == expected
    else:  # before transformers 5 some quirks are not there yet (Gemma scaled outside its module)
        assert detected <= expected


@needs_transformers
def test_placeholder_ids_of_the_vlm_are_its_image_and_video_tokens() -> None:
    from support_matrix import IMAGE_TOKEN, VIDEO_TOKEN

    model = next(family for family in FAMILIES if family.vision).build()
    assert placeholder_token_ids(model.config) == (IMAGE_TOKEN, VIDEO_TOKEN)


def test_packing_position_ids_are_the_two_dimensional_ones() -> None:
    flat = torch.arange(6).view(1, 6)
    assert packing_position_ids(flat) is flat
    assert packing_position_ids(torch.arange(6).expand(3, 1, 6)) is None  # M-RoPE
    assert packing_position_ids(torch.arange(6)) is None
    assert packing_position_ids(None) is None
    assert packing_position_ids([[0, 1, 2]]) is None


def test_placeholder_ids_are_unique_sorted_and_valid() -> None:
    config = SimpleNamespace(image_token_index=32000, image_token_id=32000, video_token_id=7, audio_token_id=-1)
    assert placeholder_token_ids(config) == (7, 32000)
    assert placeholder_token_ids(None) == ()


def test_pad_token_id_comes_from_the_text_config() -> None:
    nested = SimpleNamespace(pad_token_id=None, get_text_config=lambda: SimpleNamespace(pad_token_id=3))
    assert pad_token_id(nested) == 3
    assert pad_token_id(SimpleNamespace(pad_token_id=5)) == 5
    assert text_config(nested) is not nested
    for invalid in (True, -1, None, "0"):
        assert pad_token_id(SimpleNamespace(pad_token_id=invalid)) is None
    assert pad_token_id(None) is None


class _Seq2Seq(nn.Module):
    def __init__(self, is_encoder_decoder: bool, decoder: Any) -> None:
        super().__init__()
        self.config = SimpleNamespace(is_encoder_decoder=is_encoder_decoder)
        self.encoder = nn.Embedding(4, 2)
        self._decoder = decoder

    def get_encoder(self) -> Any:
        return self.encoder

    def get_decoder(self) -> Any:
        return self._decoder


def test_encoder_decoder_stacks_only_for_encoder_decoder_models_with_module_stacks() -> None:
    decoder = nn.Embedding(4, 2)
    model = _Seq2Seq(True, decoder)
    assert encoder_decoder_stacks(model) == Stacks(model.encoder, decoder)
    assert encoder_decoder_stacks(_Seq2Seq(False, decoder)) is None
    assert encoder_decoder_stacks(_Seq2Seq(True, "not a module")) is None
    assert encoder_decoder_stacks(nn.Linear(2, 2)) is None


class _ScaledEmbedding(nn.Embedding):
    def __init__(self, scale: float | torch.Tensor) -> None:
        super().__init__(4, 2)
        if isinstance(scale, torch.Tensor):
            self.register_buffer("embed_scale", scale, persistent=False)
        else:
            self.embed_scale = scale


class _Wrapper(nn.Module):
    def __init__(self, name: str, inner: nn.Module) -> None:
        super().__init__()
        self.add_module(name, inner)


@pytest.mark.parametrize("child", ["base_layer", "original_module", "token_adapter"])
def test_embed_scale_is_found_inside_wrappers(child: str) -> None:
    scaled = _ScaledEmbedding(torch.tensor(8.0))
    wrapped = _Wrapper(child, _Wrapper("base_layer", scaled))
    assert embedding_scale_source(wrapped) is scaled
    assert embed_scale_factor(wrapped) == 8.0
    assert embedding_scale_source(_Wrapper("other", scaled)) is None
    assert embed_scale_factor(_Wrapper("other", scaled)) == 1.0


def test_embed_scale_of_one_or_none_is_no_scale() -> None:
    assert embed_scale(_ScaledEmbedding(1.0)) is None
    assert embed_scale(None) is None
    assert embed_scale(nn.Embedding(4, 2)) is None
    assert embed_scale(_ScaledEmbedding(2.5)) == 2.5
    assert embed_scale_factor(_ScaledEmbedding(1.0)) == 1.0
