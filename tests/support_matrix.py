"""The model families neftune is checked on, and the measurement behind `docs/SUPPORT.md`.

Each family is a tiny config (hidden 64, one layer, no dropout). The noise is measured where the embeddings enter
the network: the input of the first layer (or of the embedding LayerNorm, for BART), as the difference between a
training forward and the same forward with the noise suspended. There, the paper's bound for row i is
`scale * alpha / sqrt(L_i * d)`, with `scale` the model's own embedding multiplier, applied inside the module
(Gemma, BART: the noise is scaled to match) or outside it (Granite: the model scales the noised output).

A family with a quirk (`neftune.model_families`) also has a row in `FAMILY_QUIRKS` under the same name;
tests/test_model_families.py checks that the two agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

ALPHA = 5.0
HIDDEN = 64
VOCAB = 160
SEQ_LEN = 16
ROW_LENGTHS = [16, 9]  # right padding
DECODER_LEN = 12
DECODER_ROW_LENGTHS = [12, 7]
IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = 150, 151, 152, 153

_DECODER_ONLY = {
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "intermediate_size": 2 * HIDDEN,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "pad_token_id": 0,
}


@dataclass
class Family:
    name: str
    build: Callable[[], nn.Module]
    capture: list[str]  # modules whose first input is measured: the encoder's first, then the decoder's
    scale: float = 1.0  # the model's embedding multiplier (inside or outside the embedding module)
    notes: str = ""
    encoder_decoder: bool = False
    vision: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _causal(config_name: str, **overrides: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        config = getattr(transformers, config_name)(**{**_DECODER_ONLY, **overrides})
        return transformers.AutoModelForCausalLM.from_config(config)

    return build


def _from_config(config_name: str, model_name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        config = getattr(transformers, config_name)(**kwargs)
        return getattr(transformers, model_name)(config)

    return build


def _qwen2_vl() -> nn.Module:
    import transformers

    text = {**_DECODER_ONLY, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}}
    # transformers < 4.52 keeps the text options at the top level (no text_config sub-config)
    nested = "text_config" in getattr(transformers.Qwen2VLConfig, "sub_configs", {})
    config = transformers.Qwen2VLConfig(
        **({"text_config": text} if nested else text),
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": HIDDEN,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 2,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_channels": 3,
        },
        image_token_id=IMAGE_TOKEN,
        video_token_id=VIDEO_TOKEN,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        eos_token_id=1,
    )
    return transformers.Qwen2VLForConditionalGeneration(config)


FAMILIES: list[Family] = [
    Family("Llama", _causal("LlamaConfig"), ["model.layers.0"]),
    Family("Mistral", _causal("MistralConfig"), ["model.layers.0"]),
    Family("Qwen2", _causal("Qwen2Config"), ["model.layers.0"]),
    Family("Qwen3", _causal("Qwen3Config", head_dim=16), ["model.layers.0"]),
    Family(
        "Gemma",
        _causal("GemmaConfig", head_dim=16),
        ["model.layers.0"],
        math.sqrt(HIDDEN),
        "scales by sqrt(d) inside the embedding module: the noise is scaled to match",
    ),
    Family(
        "Gemma2",
        _causal("Gemma2Config", head_dim=16),
        ["model.layers.0"],
        math.sqrt(HIDDEN),
        "scales by sqrt(d) inside the embedding module: the noise is scaled to match",
    ),
    Family(
        "Gemma3 (text)",
        _causal("Gemma3TextConfig", head_dim=16),
        ["model.layers.0"],
        math.sqrt(HIDDEN),
        "scales by sqrt(d) inside the embedding module: the noise is scaled to match",
    ),
    Family("Phi3", _causal("Phi3Config"), ["model.layers.0"]),
    Family(
        "GPT-2",
        _from_config(
            "GPT2Config",
            "GPT2LMHeadModel",
            vocab_size=VOCAB,
            n_embd=HIDDEN,
            n_layer=1,
            n_head=4,
            embd_pdrop=0.0,
            resid_pdrop=0.0,
            attn_pdrop=0.0,
        ),
        ["transformer.h.0"],
        notes="learned positions are added after the hook, noise-free",
    ),
    Family(
        "GPT-NeoX",
        _from_config(
            "GPTNeoXConfig",
            "GPTNeoXForCausalLM",
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=2 * HIDDEN,
            hidden_dropout=0.0,
            attention_dropout=0.0,
        ),
        ["gpt_neox.layers.0"],
    ),
    Family(
        "OPT",
        _from_config(
            "OPTConfig",
            "OPTForCausalLM",
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            word_embed_proj_dim=HIDDEN,
            ffn_dim=2 * HIDDEN,
            num_hidden_layers=1,
            num_attention_heads=4,
            dropout=0.0,
            attention_dropout=0.0,
            pad_token_id=0,
        ),
        ["model.decoder.layers.0"],
        notes="learned positions are added after the hook, noise-free",
    ),
    Family(
        "Falcon",
        _from_config(
            "FalconConfig",
            "FalconForCausalLM",
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=1,
            num_attention_heads=4,
            hidden_dropout=0.0,
            attention_dropout=0.0,
        ),
        ["transformer.h.0"],
    ),
    Family(
        "Granite",
        _causal("GraniteConfig", embedding_multiplier=12.0),
        ["model.layers.0"],
        12.0,
        "embedding_multiplier applied outside the module scales the noise with the embeddings",
    ),
    Family(
        "T5",
        _from_config(
            "T5Config",
            "T5ForConditionalGeneration",
            vocab_size=VOCAB,
            d_model=HIDDEN,
            d_kv=16,
            d_ff=2 * HIDDEN,
            num_layers=1,
            num_heads=4,
            dropout_rate=0.0,
            pad_token_id=0,
            decoder_start_token_id=0,
        ),
        ["encoder.block.0", "decoder.block.0"],
        encoder_decoder=True,
        notes="get_input_embeddings() is `shared`, never called: encoder.embed_tokens and decoder.embed_tokens "
        "are hooked",
    ),
    Family(
        "BART",
        _from_config(
            "BartConfig",
            "BartForConditionalGeneration",
            vocab_size=VOCAB,
            d_model=HIDDEN,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=2 * HIDDEN,
            decoder_ffn_dim=2 * HIDDEN,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            scale_embedding=True,
            pad_token_id=1,
        ),
        ["model.encoder.layernorm_embedding", "model.decoder.layernorm_embedding"],
        math.sqrt(HIDDEN),
        encoder_decoder=True,
        notes="`shared` is never called: encoder/decoder embed_tokens are hooked; scale_embedding=True scales "
        "by sqrt(d) inside the module: the noise is scaled to match; measured before layernorm_embedding",
    ),
    Family(
        "Qwen2-VL",
        _qwen2_vl,
        ["model.language_model.layers.0"],
        vision=True,
        notes="image placeholder positions get no noise and do not count in L; 0-D/1-D probes pass untouched",
    ),
    Family(
        "Llama (sequence classification)",
        _from_config("LlamaConfig", "LlamaForSequenceClassification", **_DECODER_ONLY, num_labels=2),
        ["model.layers.0"],
    ),
]


def family_inputs(family: Family) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """The batch, and for every capture point the (batch, seq_len) mask of positions that are noised text."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(2, 140, (2, SEQ_LEN), generator=generator)
    mask = torch.zeros(2, SEQ_LEN, dtype=torch.long)
    for row, length in enumerate(ROW_LENGTHS):
        mask[row, :length] = 1
    inputs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": mask}
    text = [mask.clone()]
    if family.encoder_decoder:
        decoder_ids = torch.randint(2, 140, (2, DECODER_LEN), generator=generator)
        decoder_mask = torch.zeros(2, DECODER_LEN, dtype=torch.long)
        for row, length in enumerate(DECODER_ROW_LENGTHS):
            decoder_mask[row, :length] = 1
        inputs.update(decoder_input_ids=decoder_ids, decoder_attention_mask=decoder_mask)
        text.append(decoder_mask.clone())
    if family.vision:
        # one 4x2-patch image per row -> 2 placeholder tokens after the 2x2 merge
        input_ids[:, 3], input_ids[:, 6] = VISION_START, VISION_END
        input_ids[:, 4:6] = IMAGE_TOKEN
        inputs.update(
            pixel_values=torch.randn(16, 3 * 2 * 2 * 2, generator=generator),
            image_grid_thw=torch.tensor([[1, 4, 2], [1, 4, 2]]),
            mm_token_type_ids=(input_ids == IMAGE_TOKEN).long(),
        )
        text[0][:, 4:6] = 0
    return inputs, text


def _submodule(model: nn.Module, path: str) -> nn.Module:
    """`path` in the transformers 5 layout; VLMs before 4.52 had no `language_model` level."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        return model.get_submodule(path.replace("language_model.", ""))


def _capture(model: nn.Module, paths: list[str], inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for path in paths:

        def record(module: nn.Module, args: Any, kwargs: Any, path: str = path) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            seen.setdefault(path, hidden.detach().clone())

        handles.append(_submodule(model, path).register_forward_pre_hook(record, with_kwargs=True))
    with torch.no_grad():
        model(**inputs)
    for handle in handles:
        handle.remove()
    return [seen[path] for path in paths]


def _our_hooks_left(model: nn.Module) -> int:
    from neftune.installed_hooks import _stack_of

    return sum(
        1
        for module in model.modules()
        for hooks in (module._forward_hooks, module._forward_pre_hooks)
        for hook in hooks.values()
        if _stack_of(hook) is not None
    )


@dataclass
class SupportRow:
    family: str
    hooked: list[str]
    fires_in_training: bool
    clean_in_eval: bool
    max_over_bound: list[float]  # per capture point: max over rows of (max |noise| / bound)
    min_over_bound: list[float]
    pads_untouched: bool
    relative_noise: list[float]  # noise RMS / clean RMS at the capture point, real tokens
    removed_cleanly: bool
    notes: str


def measure(family: Family, **config: Any) -> SupportRow:
    from neftune import NEFTuneConfig, apply_neftune, disable_noise

    torch.manual_seed(0)
    model = family.build()
    inputs, text_masks = family_inputs(family)
    model.eval()
    eval_before = _capture(model, family.capture, inputs)
    handle = apply_neftune(model, NEFTuneConfig(alpha=ALPHA, **config))
    eval_hooked = _capture(model, family.capture, inputs)
    model.train()
    torch.manual_seed(1)
    noisy = _capture(model, family.capture, inputs)
    with disable_noise(model):
        clean = _capture(model, family.capture, inputs)
    max_ratio, min_ratio, relative = [], [], []
    pads_untouched = True
    for noisy_point, clean_point, text in zip(noisy, clean, text_masks, strict=True):
        noise = (noisy_point - clean_point).double()
        ratios = []
        for row in range(noise.shape[0]):
            real = text[row] == 1
            bound = family.scale * ALPHA / math.sqrt(int(real.sum()) * HIDDEN)
            ratios.append(noise[row][real].abs().max().item() / bound)
            pads_untouched &= bool((noise[row][~real] == 0).all())
        max_ratio.append(max(ratios))
        min_ratio.append(min(ratios))
        real_all = text == 1
        relative.append(
            (noise[real_all].pow(2).mean().sqrt() / clean_point.double()[real_all].pow(2).mean().sqrt()).item()
        )
    hooked = list(handle.module_names)
    handle.remove()
    after = _capture(model, family.capture, inputs)
    return SupportRow(
        family=family.name,
        hooked=hooked,
        fires_in_training=all(not torch.equal(a, b) for a, b in zip(noisy, clean, strict=True)),
        clean_in_eval=all(torch.equal(a, b) for a, b in zip(eval_before, eval_hooked, strict=True)),
        max_over_bound=max_ratio,
        min_over_bound=min_ratio,
        pads_untouched=pads_untouched,
        relative_noise=relative,
        removed_cleanly=_our_hooks_left(model) == 0
        and all(torch.equal(a, b) for a, b in zip(after, clean, strict=True)),
        notes=family.notes,
    )
