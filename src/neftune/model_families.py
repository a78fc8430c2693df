"""What is special about a model family, in one place: the quirks neftune handles and the names it reads.

The rest of the core asks this module instead of spelling a config field, an attribute or an argument name
itself: discovery.py (which stacks to hook), apply.py and hook.py (the embedding scale, the placeholder and pad
ids), call_context.py and layout.py (the forward arguments that carry the batch layout).

Most decoder-only families (Llama, Mistral, Qwen2/3, Phi3, GPT-NeoX, Falcon) have no quirk, and some differences
need nothing: a multiplier applied outside the embedding module (Granite's `embedding_multiplier`) scales the
noised output with the embeddings, and learned positions added after it (GPT-2, OPT) stay noise-free.

Adding a family touches two places:

1. `FAMILY_QUIRKS` below, only if the family has a quirk: a row under its name. If it spells a known quirk
   differently (another config field for its image token, say), add that spelling to the constant the quirk
   reads. A new kind of quirk gets a `Quirk` member, the function handling it here, and a call where it is needed.
2. `FAMILIES` in tests/support_matrix.py: the family's tiny config under the same name. tests/test_model_families.py
   checks that every row names a matrix family, that every quirk has a family, and that each quirk is detected on
   the built models of exactly the families whose row lists it.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

import torch
from torch import nn


class Quirk(enum.Enum):
    # The embedding module multiplies its output by its `embed_scale` inside its own forward (Gemma's sqrt(d) in
    # transformers >= 5, BART's scale_embedding). The hook sees scaled embeddings, so the noise is scaled the same
    # way and alpha means the same on every model: `embedding_scale_source`, `embed_scale`.
    SCALED_EMBEDDING = "scaled embedding"
    # Separate encoder and decoder stacks, each given its own ids and mask: both stacks' embeddings are hooked, the
    # decoder's unless `noise_decoder_inputs=False` (`encoder_decoder_stacks`). The decoder stack receives
    # `decoder_attention_mask` as its own `attention_mask`, so no other argument name is needed.
    ENCODER_DECODER = "encoder-decoder"
    # `get_input_embeddings()` is `shared`, whose weight both stacks' embeddings use. transformers >= 5 gives each
    # stack its own module and never calls `shared`, so the stacks' modules are hooked. Where both stacks call one
    # module (transformers 4), it is hooked once and kept quiet inside the decoder when its inputs stay clean.
    SHARED_EMBEDDING = "shared embedding"
    # A VLM replaces the embeddings of its image/video/audio placeholder tokens with encoder features: they are not
    # text, so they get no noise and do not count in L (`placeholder_token_ids`). The hook also lets the 0-D/1-D
    # embedding probes a VLM makes to find its placeholders pass untouched.
    PLACEHOLDER_TOKENS = "placeholder tokens"
    # The text options (`pad_token_id`) live in a sub-config, `config.text_config` (`text_config`).
    TEXT_SUB_CONFIG = "text sub-config"
    # M-RoPE gives position ids one axis each for time, height and width, (3, batch, seq_len): they number image
    # patches, not restarts at packed-sequence starts, so they are not read as boundaries (`packing_position_ids`).
    MULTI_AXIS_POSITION_IDS = "multi-axis position ids"


# The families with a quirk, under their names in tests/support_matrix.py.
FAMILY_QUIRKS: dict[str, frozenset[Quirk]] = {
    # *TextScaledWordEmbedding; Gemma and Gemma2 scaled outside the module before transformers 5 (nothing needed)
    "Gemma": frozenset({Quirk.SCALED_EMBEDDING}),
    "Gemma2": frozenset({Quirk.SCALED_EMBEDDING}),
    "Gemma3 (text)": frozenset({Quirk.SCALED_EMBEDDING}),
    "T5": frozenset({Quirk.ENCODER_DECODER, Quirk.SHARED_EMBEDDING}),
    # scale_embedding=True: BartScaledWordEmbedding multiplies by sqrt(d_model)
    "BART": frozenset({Quirk.ENCODER_DECODER, Quirk.SHARED_EMBEDDING, Quirk.SCALED_EMBEDDING}),
    # text_config since transformers 4.52
    "Qwen2-VL": frozenset({Quirk.PLACEHOLDER_TOKENS, Quirk.TEXT_SUB_CONFIG, Quirk.MULTI_AXIS_POSITION_IDS}),
}


# Forward arguments that tell real tokens and sequence boundaries apart, in the order of precedence the lengths
# are taken from. Packed (padding-free) batches: transformers' flash-attention kwargs (`cu_seq_lens_q`, from
# DataCollatorWithFlattening and TRL's padding-free collator) or flash-attn's own `cu_seqlens`.
CU_SEQLENS_NAMES: tuple[str, ...] = ("cu_seq_lens_q", "cu_seqlens")
POSITION_IDS_NAME = "position_ids"
ATTENTION_MASK_NAME = "attention_mask"
INPUT_IDS_NAME = "input_ids"  # not a layout: marks the forward whose ids reach the embedding
LAYOUT_ARGUMENT_NAMES: tuple[str, ...] = (*CU_SEQLENS_NAMES, POSITION_IDS_NAME, ATTENTION_MASK_NAME, INPUT_IDS_NAME)

# Config fields naming the token ids a VLM replaces with image/video/audio features after the embedding lookup.
PLACEHOLDER_TOKEN_FIELDS: tuple[str, ...] = (
    "image_token_id",
    "image_token_index",
    "video_token_id",
    "video_token_index",
    "audio_token_id",
    "audio_token_index",
)

EMBED_SCALE_ATTRIBUTE = "embed_scale"
# Where PEFT wrappers (LoRA's layer, modules_to_save, trainable tokens) keep the family's own embedding module.
_WRAPPED_MODULE_NAMES = ("base_layer", "original_module", "token_adapter")


class Stacks(NamedTuple):
    encoder: nn.Module
    decoder: nn.Module


def encoder_decoder_stacks(model: nn.Module) -> Stacks | None:
    """The encoder and decoder stacks of an encoder-decoder model (T5, BART); None for every other model."""
    config = getattr(model, "config", None)
    get_encoder, get_decoder = getattr(model, "get_encoder", None), getattr(model, "get_decoder", None)
    if not (getattr(config, "is_encoder_decoder", False) and callable(get_encoder) and callable(get_decoder)):
        return None
    encoder, decoder = get_encoder(), get_decoder()
    if not isinstance(encoder, nn.Module) or not isinstance(decoder, nn.Module):
        return None
    return Stacks(encoder, decoder)


def text_config(config: Any) -> Any:
    """The (sub-)config holding the text options: `config.text_config` for a VLM, else `config` itself."""
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def pad_token_id(config: Any) -> int | None:
    """The pad token id of the model with this config, or None if it has no valid one."""
    value = getattr(text_config(config), "pad_token_id", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def placeholder_token_ids(config: Any) -> tuple[int, ...]:
    """Token ids whose embeddings a multimodal model overwrites with other features: not text, so not noised."""
    found = {getattr(config, field, None) for field in PLACEHOLDER_TOKEN_FIELDS}
    return tuple(sorted(value for value in found if isinstance(value, int) and value >= 0))


def packing_position_ids(position_ids: object) -> torch.Tensor | None:
    """`position_ids` if they can mark packed-sequence starts (2-D, restarting at 0); None for M-RoPE ids or none."""
    if isinstance(position_ids, torch.Tensor) and position_ids.dim() == 2:
        return position_ids
    return None


def embedding_scale_source(module: nn.Module) -> nn.Module | None:
    """The module carrying an `embed_scale` the embedding multiplies its output by inside its forward.

    PEFT wrappers are looked through: the hook sits on the wrapper, the scale on the family's module inside it.
    """
    seen: set[int] = set()
    pending = [module]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if EMBED_SCALE_ATTRIBUTE in vars(current) or EMBED_SCALE_ATTRIBUTE in current._buffers:
            return current
        for child_name in _WRAPPED_MODULE_NAMES:
            child = current._modules.get(child_name)
            if isinstance(child, nn.Module):
                pending.append(child)
    return None


def embed_scale(source: nn.Module | None) -> float | torch.Tensor | None:
    """The factor `source` (an `embedding_scale_source`) multiplies its own output by, or None when it does not."""
    scale = getattr(source, EMBED_SCALE_ATTRIBUTE, None) if source is not None else None
    if isinstance(scale, torch.Tensor) or (isinstance(scale, (int, float)) and scale != 1.0):
        return scale
    return None


def embed_scale_factor(module: nn.Module) -> float:
    """How many times transformers' hook's noise neftune adds for the same alpha on `module` (its `embed_scale`)."""
    scale = embed_scale(embedding_scale_source(module))
    return 1.0 if scale is None else float(scale)
