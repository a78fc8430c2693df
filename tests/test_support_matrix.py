"""Every model family: noise fires once, in training only, at `scale * alpha / sqrt(L * d)`, and leaves nothing behind.

With NEFTUNE_SUPPORT_ROWS=<file>, the measured rows are also written there (scripts/support_matrix.py renders
them into docs/SUPPORT.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
from support_matrix import ALPHA, FAMILIES, HIDDEN, Family, family_inputs, measure

from neftune import NEFTuneConfig, apply_neftune, disable_noise

ROWS: list[dict[str, Any]] = []


@pytest.fixture(scope="module", autouse=True)
def _write_rows() -> Any:
    yield
    target = os.environ.get("NEFTUNE_SUPPORT_ROWS")
    if target:
        Path(target).write_text(json.dumps(ROWS, indent=1))


def stacks_call_shared(family: Family) -> bool:
    """transformers 4: an encoder-decoder's `encoder.embed_tokens` is the `shared` module itself (one hook)."""
    model = family.build()
    shared = getattr(model, "shared", None)
    return shared is not None and getattr(model.encoder, "embed_tokens", None) is shared


def transformers_hook_relative_noise(family: Family) -> list[float]:
    """The same measurement with transformers' own hook (`activate_neftune`), for comparison."""
    from helpers import activate_transformers_neftune, deactivate_transformers_neftune
    from support_matrix import _capture

    torch.manual_seed(0)
    model = family.build()
    inputs, text_masks = family_inputs(family)
    model.train()
    handle = activate_transformers_neftune(model, ALPHA)
    torch.manual_seed(1)
    noisy = _capture(model, family.capture, inputs)
    deactivate_transformers_neftune(model, handle)
    clean = _capture(model, family.capture, inputs)
    relative = []
    for noisy_point, clean_point, text in zip(noisy, clean, text_masks, strict=True):
        real = text == 1
        noise = (noisy_point - clean_point).double()[real]
        relative.append((noise.pow(2).mean().sqrt() / clean_point.double()[real].pow(2).mean().sqrt()).item())
    return relative


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_family(family: Family) -> None:
    row = measure(family)
    assert row.fires_in_training
    assert row.clean_in_eval
    assert row.pads_untouched
    assert row.removed_cleanly
    for high, low in zip(row.max_over_bound, row.min_over_bound, strict=True):
        # every row's largest |noise| is within float rounding of its bound and close to it (>= 448 draws each:
        # P(max |U| < 0.97) < 1e-5): the noise fires once, at the intended scale, with the right L
        assert high <= 1.0 + 1e-4
        assert low >= 0.97
    expected_hooks = 2 if family.encoder_decoder and not stacks_call_shared(family) else 1
    assert len(row.hooked) == expected_hooks
    ROWS.append({**dataclasses.asdict(row), "transformers_relative_noise": transformers_hook_relative_noise(family)})


def test_alpha_means_the_same_with_scaled_embeddings() -> None:
    """Gemma scales by sqrt(d) inside the module and Granite by 12 outside: relative noise equals Llama's."""
    by_name = {f.name: f for f in FAMILIES}
    llama = measure(by_name["Llama"]).relative_noise[0]
    for name in ["Gemma", "Gemma2", "Gemma3 (text)", "Granite"]:
        assert measure(by_name[name]).relative_noise[0] == pytest.approx(llama, rel=1e-3)


def test_transformers_hook_is_a_no_op_on_t5_and_weaker_on_gemma() -> None:
    """What the support matrix compares against (REFERENCE.md section 2), measured."""
    by_name = {f.name: f for f in FAMILIES}
    if stacks_call_shared(by_name["T5"]):
        pytest.skip("transformers 4: T5's stacks call `shared` and Gemma scales outside the module; no gap to measure")
    assert transformers_hook_relative_noise(by_name["T5"]) == [0.0, 0.0]
    llama = transformers_hook_relative_noise(by_name["Llama"])[0]
    assert transformers_hook_relative_noise(by_name["Gemma"])[0] == pytest.approx(llama / HIDDEN**0.5, rel=1e-2)


@pytest.mark.parametrize("name", ["T5", "BART"])
def test_decoder_inputs_can_be_left_clean(name: str) -> None:
    family = next(f for f in FAMILIES if f.name == name)
    row = measure(family, noise_decoder_inputs=False)
    assert len(row.hooked) == 1 and ("encoder" in row.hooked[0] or stacks_call_shared(family))
    assert row.min_over_bound[0] >= 0.97
    assert row.relative_noise[1] == 0.0


@pytest.mark.parametrize("noise_decoder_inputs", [True, False])
def test_one_embedding_shared_by_encoder_and_decoder(noise_decoder_inputs: bool) -> None:
    """transformers 4 layout: both stacks call the same module; decoder calls stay quiet when asked."""
    family = next(f for f in FAMILIES if f.name == "T5")
    torch.manual_seed(0)
    model = family.build()
    model.decoder.embed_tokens = model.encoder.embed_tokens
    inputs, _text = family_inputs(family)
    from support_matrix import _capture

    handle = apply_neftune(model, NEFTuneConfig(alpha=ALPHA, noise_decoder_inputs=noise_decoder_inputs))
    assert handle.module_names == (
        ("shared",) if model.shared is model.encoder.embed_tokens else ("encoder.embed_tokens",)
    )
    model.train()
    noisy = _capture(model, family.capture, inputs)
    with disable_noise(model):
        clean = _capture(model, family.capture, inputs)
    encoder_noise = (noisy[0] - clean[0]).abs()
    decoder_noise = (noisy[1] - clean[1]).abs()
    assert encoder_noise[0].max() <= ALPHA / (16 * HIDDEN) ** 0.5 * (1 + 1e-4)
    if noise_decoder_inputs:  # each call with its own stack's mask: decoder row 1 has L = 7
        assert decoder_noise[1].max() == pytest.approx(ALPHA / (7 * HIDDEN) ** 0.5, rel=0.03)
        assert (decoder_noise[1][7:] == 0).all()
    else:
        assert (decoder_noise == 0).all()


def test_vlm_probes_pass_untouched_and_placeholders_are_not_text() -> None:
    family = next(f for f in FAMILIES if f.vision)
    model = family.build()
    apply_neftune(model, ALPHA)
    model.train()
    embedding = model.get_input_embeddings()
    image = model.config.image_token_id
    weight = embedding.weight.detach()
    with torch.no_grad():
        assert torch.equal(embedding(torch.tensor(image)), weight[image])  # 0-D probe (get_placeholder_mask)
        assert torch.equal(embedding(torch.tensor([image])), weight[image][None])  # 1-D probe of a placeholder
    ids = torch.tensor([[5, 6, image, image, 7]])
    with torch.no_grad():
        noise = (embedding(ids) - weight[ids]).abs()
    assert (noise[0, 2:4] == 0).all()
    assert noise[0, [0, 1, 4]].max() == pytest.approx(ALPHA / (3 * HIDDEN) ** 0.5, rel=0.05)  # L = 3 text tokens


def noise_entering_first_layer(family: Family, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """|noise| at the family's first capture point in one training forward of `inputs`, alpha = ALPHA."""
    from support_matrix import _capture

    torch.manual_seed(0)
    model = family.build()
    apply_neftune(model, ALPHA)
    model.train()
    noisy = _capture(model, family.capture, inputs)[0]
    with disable_noise(model):
        clean = _capture(model, family.capture, inputs)[0]
    return (noisy - clean).abs()


def test_vlm_multi_axis_position_ids_leave_the_lengths_to_the_mask() -> None:
    """M-RoPE's (3, batch, seq_len) position ids mark no sequence starts: each row's L is its mask's."""
    from support_matrix import SEQ_LEN

    family = next(f for f in FAMILIES if f.vision)
    inputs, text = family_inputs(family)
    inputs["position_ids"] = torch.arange(SEQ_LEN).expand(3, 2, SEQ_LEN)
    noise = noise_entering_first_layer(family, inputs)
    for row in range(2):
        real = text[0][row] == 1
        bound = ALPHA / (int(real.sum()) * HIDDEN) ** 0.5
        assert 0.97 <= noise[row][real].max().item() / bound <= 1.0 + 1e-4
        assert (noise[row][~real] == 0).all()


def test_vlm_pad_id_is_read_from_the_text_config() -> None:
    """Qwen2-VL keeps pad_token_id in text_config: a packed segment of only pad ids is still padding."""
    from support_matrix import SEQ_LEN

    family = next(f for f in FAMILIES if f.vision)
    assert family.build().config.get_text_config().pad_token_id == 0
    input_ids = torch.randint(2, 140, (2, SEQ_LEN), generator=torch.Generator().manual_seed(0))
    input_ids[1, 10:] = 0  # row 1: a 10-token sequence, then a pad tail whose positions restart at 0
    position_ids = torch.stack([torch.arange(SEQ_LEN), torch.cat([torch.arange(10), torch.arange(SEQ_LEN - 10)])])
    noise = noise_entering_first_layer(family, {"input_ids": input_ids, "position_ids": position_ids})
    assert noise[0].max().item() == pytest.approx(ALPHA / (SEQ_LEN * HIDDEN) ** 0.5, rel=0.03)
    assert noise[1, :10].max().item() == pytest.approx(ALPHA / (10 * HIDDEN) ** 0.5, rel=0.03)
    assert (noise[1, 10:] == 0).all()


def test_prompt_tuning_noises_the_real_tokens_not_the_virtual_ones() -> None:
    peft = pytest.importorskip("peft")
    family = next(f for f in FAMILIES if f.name == "Llama")
    torch.manual_seed(0)
    model = peft.get_peft_model(family.build(), peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    inputs, _text = family_inputs(family)
    handle = apply_neftune(model, ALPHA)
    from support_matrix import _capture

    model.train()
    noisy = _capture(model, ["base_model.model.layers.0"], inputs)[0]
    with disable_noise(model):
        clean = _capture(model, ["base_model.model.layers.0"], inputs)[0]
    noise = (noisy - clean).abs()
    assert (noise[:, :4] == 0).all()  # virtual prompt tokens come from the prompt encoder: no noise
    for row, length in enumerate([16, 9]):
        assert noise[row, 4 : 4 + length].max() == pytest.approx(ALPHA / (length * HIDDEN) ** 0.5, rel=0.03)
        assert (noise[row, 4 + length :] == 0).all()
    handle.remove()


def test_qlora_4bit() -> None:
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed on this CPU machine")
    assert bnb is not None


def test_torch_compile_fullgraph_fresh_noise_and_no_extra_recompiles() -> None:
    from torch._dynamo.testing import CompileCounterWithBackend

    from neftune.toy import tiny_llama

    def compiles(with_neftune: bool) -> tuple[int, list[torch.Tensor]]:
        torch._dynamo.reset()
        model = tiny_llama(128, 32)
        if with_neftune:
            apply_neftune(model, NEFTuneConfig(alpha=ALPHA, schedule="linear"))
        model.train()
        backend = CompileCounterWithBackend("eager")
        compiled = torch.compile(model, backend=backend, fullgraph=True)
        outputs = []
        for step, length in enumerate([16, 16, 24, 32, 24]):
            if with_neftune:
                next(iter(compiled._orig_mod.model.embed_tokens._forward_hooks.values())).state.set_progress(step / 5)
            ids = torch.arange(2 * length).view(2, length) % 128
            mask = torch.ones(2, length, dtype=torch.long)
            mask[1, length - 3 :] = 0
            outputs.append(compiled(input_ids=ids, attention_mask=mask).logits.detach())
        return backend.frame_count, outputs

    plain_frames, _ = compiles(False)
    frames, outputs = compiles(True)
    assert frames == plain_frames  # the model's own dynamic-shape recompile only, none per step or schedule value
    assert not torch.equal(outputs[0], outputs[1])  # fresh noise every step under compile
