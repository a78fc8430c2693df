"""The padded path's multiplier (schedule factor times the module's `embed_scale`), made without a ones tensor,
has exactly the bits `_scaled` gives a magnitude of 1, and is a new tensor the schedule cannot refill later."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from neftune import NEFTuneConfig
from neftune.hook import NoiseHook
from neftune.state import NoiseState

CPU = torch.device("cpu")
ODD_SCALE = math.sqrt(2048.0)  # Gemma's sqrt(hidden): not a float32 number


class Scaled(nn.Module):
    def __init__(self, embed_scale: float | torch.Tensor) -> None:
        super().__init__()
        self.embed_scale = embed_scale


SCALES: list[float | torch.Tensor | None] = [
    None,
    ODD_SCALE,
    torch.tensor(ODD_SCALE, dtype=torch.bfloat16),  # a buffer cast with the model
    torch.tensor([ODD_SCALE], dtype=torch.float64),
]


@pytest.mark.parametrize("embed_scale", SCALES, ids=["none", "float", "bf16-buffer", "float64-1d"])
@pytest.mark.parametrize(("schedule", "warmup"), [("constant", 0.0), ("linear", 0.0), ("cosine", 0.1)])
def test_unit_scale_has_the_bits_of_scaled_one(
    embed_scale: float | torch.Tensor | None, schedule: str, warmup: float
) -> None:
    state = NoiseState(NEFTuneConfig(scaling="padded", schedule=schedule, schedule_warmup=warmup))  # type: ignore[arg-type]
    state.set_progress(0.37)  # a factor that float32 rounds
    hook = NoiseHook(state, "embed", Scaled(embed_scale) if embed_scale is not None else None)
    unit = hook._unit_scale(CPU)
    if not state.schedule.varies and embed_scale is None:
        assert unit is None
        return
    expected = hook._scaled(torch.ones((), dtype=torch.float32, device=CPU))
    assert unit is not None and unit.dtype == torch.float32 and unit.shape == expected.shape
    assert torch.equal(unit.view(torch.int32), expected.view(torch.int32))
    state.set_progress(0.9)  # the factor tensor is refilled in place; the plan's scale must keep its value
    assert torch.equal(unit.view(torch.int32), expected.view(torch.int32))
    if isinstance(embed_scale, torch.Tensor):
        assert unit.data_ptr() != embed_scale.data_ptr()
