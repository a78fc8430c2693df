"""Random module trees and random layouts against a plain reference of the spec.

Every generated model nests its embedding(s) under wrappers that pass the layout on, pass only the ids, or take
none; optionally as an encoder-decoder pair of stacks (the decoder with or without its own mask), inside a
checkpointed region, behind a PEFT LoRA wrapper, with an `embed_scale`. The embedding weights are zero, so each
stack's output is exactly the noise. Per real token, the largest |noise| over d = 64 elements must lie in
[0.5, 1] x `scale * alpha / sqrt(L * d)` (below 0.5 by chance: 2^-64); pads get exactly zero; a checkpoint
recompute reproduces the forward's output exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.checkpoint import checkpoint

from neftune import apply_neftune

HIDDEN = 64
PAD = 0
ALPHA = 5.0


class ScaledEmbedding(nn.Embedding):
    """An embedding that scales its own output (Gemma's kind): the noise must be scaled alike."""

    def __init__(self, vocab: int, hidden: int, embed_scale: float) -> None:
        super().__init__(vocab, hidden)
        self.embed_scale = embed_scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids) * self.embed_scale


class Stack(nn.Module):
    """Calls its embedding, maybe inside a non-reentrant checkpoint; records every output, recomputes included."""

    def __init__(self, embed_scale: float, checkpointed: bool) -> None:
        super().__init__()
        self.embed_tokens = ScaledEmbedding(32, HIDDEN, embed_scale) if embed_scale != 1 else nn.Embedding(32, HIDDEN)
        nn.init.zeros_(self.embed_tokens.weight)
        self.checkpointed = checkpointed
        self.outputs: list[torch.Tensor] = []

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.embed_tokens(input_ids)
        self.outputs.append(result.detach().clone())
        # an op that saves its output for backward, so the checkpoint has something to recompute
        return result + 0.0 * torch.sigmoid(result)

    def forward(self, input_ids: torch.Tensor, **layout: Any) -> torch.Tensor:
        if self.checkpointed:
            result: torch.Tensor = checkpoint(self._embed, input_ids, use_reentrant=False)
            return result
        return self._embed(input_ids)


class Wrapper(nn.Module):
    """One level of nesting that passes the ids and the layout on, or (`ids_only`) the ids alone."""

    def __init__(self, child: nn.Module, ids_only: bool) -> None:
        super().__init__()
        self.child = child
        self.ids_only = ids_only

    def forward(self, input_ids: torch.Tensor, **layout: Any) -> torch.Tensor:
        result: torch.Tensor = self.child(input_ids) if self.ids_only else self.child(input_ids, **layout)
        return result


class RenamedWrapper(nn.Module):
    """A level whose forward calls the ids `tokens`: it records the layout but is not known to carry ids."""

    def __init__(self, child: nn.Module) -> None:
        super().__init__()
        self.child = child

    def forward(self, tokens: torch.Tensor, **layout: Any) -> torch.Tensor:
        result: torch.Tensor = self.child(tokens, **layout)
        return result


class Config(SimpleNamespace):
    """Attributes like a HF config; `.get` too, which PEFT < 0.14 calls on it."""

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)


class Model(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module | None, decoder_mask: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.decoder_mask = decoder_mask
        self.config = Config(pad_token_id=PAD)  # where neftune learns the pad id, as from a HF config

    def forward(
        self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor | None = None, **layout: Any
    ) -> list[torch.Tensor]:
        outputs = [self.encoder(input_ids, **layout)]
        if self.decoder is not None:
            assert decoder_input_ids is not None
            if self.decoder_mask:
                mask = torch.ones_like(decoder_input_ids)
                mask[0, -2:] = 0  # the decoder's own padding
                outputs.append(self.decoder(decoder_input_ids, attention_mask=mask))
            else:
                outputs.append(self.decoder(decoder_input_ids))
        return outputs


@dataclass
class Layout:
    kwargs: dict[str, torch.Tensor]
    magnitude_scale: torch.Tensor  # (batch, seq): 1/sqrt(L) per real token, 0 on pads


def reference_magnitudes(kind: str, rows: list[list[int]], seq_len: int, pads: int) -> Layout:
    """The spec, written plainly: each sequence its own L, pads zero and uncounted."""
    batch = len(rows)
    inverse_root = torch.zeros(batch, seq_len, dtype=torch.float64)
    if kind == "mask":
        mask = torch.zeros(batch, seq_len, dtype=torch.long)
        for row, (length,) in enumerate(rows):
            mask[row, :length] = 1
            inverse_root[row, :length] = 1 / math.sqrt(length)
        return Layout({"attention_mask": mask}, inverse_root)
    position_ids = torch.zeros(batch, seq_len, dtype=torch.long)
    for row, segments in enumerate(rows):
        start = 0
        for length in segments:
            position_ids[row, start : start + length] = torch.arange(length)
            inverse_root[row, start : start + length] = 1 / math.sqrt(length)
            start += length
    if kind == "positions":
        return Layout({"position_ids": position_ids}, inverse_root)
    starts = [0]
    for length in rows[0]:
        starts.append(starts[-1] + length)
    starts += [starts[-1] + 1 + index for index in range(pads)]  # each pad its own 1-token segment
    return Layout({"position_ids": position_ids, "cu_seq_lens_q": torch.tensor(starts)}, inverse_root)


@st.composite
def layouts(draw: st.DrawFn) -> tuple[str, list[list[int]], int, int]:
    kind = draw(st.sampled_from(["mask", "positions", "cu_seq_lens"]))
    pads = draw(st.integers(0, 3))
    if kind == "mask":
        rows = [[draw(st.integers(1, 9))] for _ in range(draw(st.integers(1, 3)))]
        return kind, rows, max(r[0] for r in rows) + pads, pads
    batch = 1 if kind == "cu_seq_lens" else draw(st.integers(1, 2))
    segments = draw(st.lists(st.integers(1, 6), min_size=1, max_size=4))
    rows = [segments for _ in range(batch)]
    return kind, rows, sum(segments) + pads, pads


@settings(max_examples=30, deadline=None)
@given(
    layout=layouts(),
    levels=st.lists(st.sampled_from(["layout", "ids", "renamed"]), max_size=3),
    encoder_decoder=st.booleans(),
    decoder_mask=st.booleans(),
    checkpointed=st.booleans(),
    lora=st.booleans(),
    embed_scale=st.sampled_from([1.0, 8.0]),
    seed=st.integers(0, 2**16),
)
def test_every_embedding_call_matches_the_spec(
    layout: tuple[str, list[list[int]], int, int],
    levels: list[str],
    encoder_decoder: bool,
    decoder_mask: bool,
    checkpointed: bool,
    lora: bool,
    embed_scale: float,
    seed: int,
) -> None:
    kind, rows, seq_len, pads = layout
    spec = reference_magnitudes(kind, rows, seq_len, pads)
    encoder_stack = Stack(embed_scale, checkpointed)
    encoder: nn.Module = encoder_stack
    for passes in levels:
        encoder = RenamedWrapper(encoder) if passes == "renamed" else Wrapper(encoder, ids_only=passes == "ids")
    decoder_stack = Stack(embed_scale, checkpointed) if encoder_decoder else None
    model: nn.Module = Model(encoder, decoder_stack, decoder_mask)
    if lora:
        peft = pytest.importorskip("peft")
        targets = ["embed_tokens"]
        model = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=targets, init_lora_weights=True))
    stacks = [encoder_stack] + ([decoder_stack] if decoder_stack is not None else [])
    apply_neftune(model, ALPHA, filter_fn=lambda module, name: name.endswith("embed_tokens"))
    model.train()
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 32, (len(rows), seq_len), generator=generator)
    ids[spec.magnitude_scale == 0] = PAD  # padding carries the pad id, as collators write it
    inputs: dict[str, Any] = {"input_ids": ids, **spec.kwargs}
    decoder_len = 7
    if encoder_decoder:
        inputs["decoder_input_ids"] = torch.randint(1, 32, (len(rows), decoder_len), generator=generator)
    torch.manual_seed(seed)
    outputs = model(**inputs)
    if checkpointed:
        sum((output * 1.5).square().sum() for output in outputs).backward()

    _assert_matches(stacks[0].outputs[0], spec.magnitude_scale, embed_scale)
    if decoder_stack is not None:
        expected = torch.full((len(rows), decoder_len), 1 / math.sqrt(decoder_len), dtype=torch.float64)
        if decoder_mask:
            expected[0] = 1 / math.sqrt(decoder_len - 2)
            expected[0, -2:] = 0
        _assert_matches(decoder_stack.outputs[0], expected, embed_scale)
    for stack in stacks:
        assert len(stack.outputs) == (2 if checkpointed else 1)
        if checkpointed:
            assert torch.equal(stack.outputs[0], stack.outputs[1])  # the recompute added the forward's noise


def _assert_matches(noise: torch.Tensor, inverse_root: torch.Tensor, embed_scale: float) -> None:
    noise = noise.double()
    per_token = noise.abs().amax(-1)
    bound = embed_scale * ALPHA / math.sqrt(HIDDEN) * inverse_root
    real = inverse_root > 0
    assert (per_token[~real] == 0).all(), "noise on padding"
    assert (per_token[real] <= bound[real] * (1 + 1e-5)).all(), "noise above the bound"
    assert (per_token[real] >= 0.5 * bound[real]).all(), "noise far below the bound (wrong L)"
