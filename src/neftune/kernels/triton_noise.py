"""The fused draw-and-add kernel: `output + scale * noise` in one read and one write of the embeddings.

Importing this module imports Triton; `neftune.kernels` imports it only when the kernel is used.

Each program owns a tile of `BLOCK_ROWS` tokens by `4 * BLOCK_Q` hidden columns. One Philox call per
(token, column-quarter) counter yields four random 32-bit words, one for each of the four column quarters
`q`, `q + quarter`, `q + 2 * quarter`, `q + 3 * quarter`: a quarter of the Philox work of one call per element,
and every load and store stays contiguous. The counter is `token * quarter + q` (int64), so the noise of an
element depends only on the seed and its position: the same seed gives the same noise, whatever the tiling.
The arithmetic is done in float32 and rounded once to the output's dtype.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from .. import noise
from ..errors import NEFTuneError

# Globals a kernel reads, annotations included, must be constexpr or from triton.language: the compiler refuses
# others (the interpreter does not check; tests/test_kernel.py compiles for sm_90 to catch it).
GAUSSIAN_STD = tl.constexpr(noise.GAUSSIAN_STD)  # the uniform's variance
# A kernel cannot look a Python table up: each noise kind is a compile-time index, and noise_add_kernel has one
# branch per index. KIND_INDEX covers every kind of neftune.noise.NOISES (tests/test_kernel.py checks).
UNIFORM = tl.constexpr(0)
GAUSSIAN = tl.constexpr(1)
SYMMETRIC = tl.constexpr(2)
KIND_INDEX: dict[str, int] = {"uniform": UNIFORM.value, "gaussian": GAUSSIAN.value, "symmetric": SYMMETRIC.value}
# BLOCK_ROWS * BLOCK_Q: each program handles 4x this many elements, 32 per thread with 4 warps. Compiled offline
# for sm_90 that is 64 registers (uniform), 85 (gaussian), 62 (symmetric), no spills; twice the tile doubles them.
TILE_ELEMENTS = 1024
NUM_WARPS = 4


@triton.jit
def _to_uniform(word: tl.tensor) -> tl.tensor:
    # The same [0, 1) mapping as tl.rand, then to [-1, 1).
    return tl.uint_to_uniform_float(word) * 2.0 - 1.0


@triton.jit
def _to_symmetric(word: tl.tensor) -> tl.tensor:
    # The sign bit of a uniform random word: +1 or -1 with probability 1/2 each.
    return tl.where(word.to(tl.int32, bitcast=True) < 0, -1.0, 1.0)


@triton.jit
def _add_quarter(
    x_ptr: tl.tensor,
    out_ptr: tl.tensor,
    rows: tl.tensor,
    row_ok: tl.tensor,
    cols: tl.tensor,
    hidden: tl.tensor,
    scale: tl.tensor,
    unit: tl.tensor,
) -> None:
    mask = row_ok[:, None] & (cols < hidden)[None, :]
    offsets = rows[:, None] * hidden + cols[None, :]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offsets, (x + scale * unit).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def noise_add_kernel(
    x_ptr: tl.tensor,
    out_ptr: tl.tensor,
    scale_ptr: tl.tensor,
    seed_ptr: tl.tensor,
    n_rows: tl.tensor,
    hidden: tl.tensor,
    quarter: tl.tensor,
    PER_TOKEN: tl.constexpr,
    KIND: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_Q: tl.constexpr,
) -> None:
    rows = (tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)).to(tl.int64)
    q = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_ok = rows < n_rows
    seed = tl.load(seed_ptr)  # read on the device: the caller never syncs to hand it over
    counter = rows[:, None] * quarter + q[None, :]
    w0, w1, w2, w3 = tl.randint4x(seed, counter)
    if PER_TOKEN:
        scale = tl.load(scale_ptr + rows, mask=row_ok, other=0.0)[:, None]
    else:
        scale = tl.load(scale_ptr)
    # four random words to four unit noise values, by kind
    if KIND == UNIFORM:
        u0, u1, u2, u3 = _to_uniform(w0), _to_uniform(w1), _to_uniform(w2), _to_uniform(w3)
    elif KIND == GAUSSIAN:
        n0, n1 = tl.pair_uniform_to_normal(tl.uint_to_uniform_float(w0), tl.uint_to_uniform_float(w1))
        n2, n3 = tl.pair_uniform_to_normal(tl.uint_to_uniform_float(w2), tl.uint_to_uniform_float(w3))
        u0, u1, u2, u3 = n0 * GAUSSIAN_STD, n1 * GAUSSIAN_STD, n2 * GAUSSIAN_STD, n3 * GAUSSIAN_STD
    else:
        tl.static_assert(KIND == SYMMETRIC, "noise_add_kernel: KIND is not an index of KIND_INDEX")
        u0, u1, u2, u3 = _to_symmetric(w0), _to_symmetric(w1), _to_symmetric(w2), _to_symmetric(w3)
    _add_quarter(x_ptr, out_ptr, rows, row_ok, q, hidden, scale, u0)
    _add_quarter(x_ptr, out_ptr, rows, row_ok, q + quarter, hidden, scale, u1)
    _add_quarter(x_ptr, out_ptr, rows, row_ok, q + 2 * quarter, hidden, scale, u2)
    _add_quarter(x_ptr, out_ptr, rows, row_ok, q + 3 * quarter, hidden, scale, u3)


INTERPRETED = type(noise_add_kernel).__name__ == "InterpretedFunction"  # TRITON_INTERPRET=1 at import


def launch(output: torch.Tensor, scale: torch.Tensor, kind: str, seed: torch.Tensor) -> torch.Tensor:
    """`output + scale * noise` as a new tensor; `output` contiguous, `scale` float32 0-D or one per token."""
    kind_index = KIND_INDEX.get(kind)
    if kind_index is None:
        raise NEFTuneError(f"neftune's fused kernel draws noise of kinds {tuple(KIND_INDEX)}, got {kind!r}.")
    result = torch.empty_like(output)
    hidden = output.shape[-1]
    n_rows = output.numel() // hidden if hidden else 0
    if n_rows == 0:
        return result
    quarter = triton.cdiv(hidden, 4)
    block_q = min(triton.next_power_of_2(quarter), 512)
    block_rows = max(1, TILE_ELEMENTS // block_q)
    grid = (triton.cdiv(n_rows, block_rows), triton.cdiv(quarter, block_q))
    noise_add_kernel[grid](
        output,
        result,
        scale,
        seed,
        n_rows,
        hidden,
        quarter,
        PER_TOKEN=scale.dim() > 0,
        KIND=kind_index,
        BLOCK_ROWS=block_rows,
        BLOCK_Q=block_q,
        num_warps=NUM_WARPS,
    )
    return result


class FusedNoiseAdd(torch.autograd.Function):
    """Forward: the kernel. Backward: the gradient of `x + noise` with respect to `x` is the identity, so
    nothing is saved (no noise tensor is kept) and no gradient flows to the magnitude or the seed."""

    @staticmethod
    def forward(ctx: Any, output: torch.Tensor, scale: torch.Tensor, kind: str, seed: torch.Tensor) -> torch.Tensor:
        return launch(output, scale, kind, seed)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return grad, None, None, None
