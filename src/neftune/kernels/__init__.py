"""Optional fused kernels for the noise: Triton, imported only when used (`pip install "neftune[triton]"`).

`fused_noise_add` draws the noise, scales it by the per-token magnitude and adds it to the embeddings in one
pass over memory, where the torch path makes five (allocate and draw, scale, add). It is statistically the
same noise as `neftune.noise`, not the same bits: `kernel="torch"` stays the bit-exact reference path.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal, get_args

import torch

from ..errors import NEFTuneError
from ..noise import NOISE_KINDS

KernelKind = Literal["auto", "torch", "triton"]
KERNELS: tuple[str, ...] = get_args(KernelKind)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what the kernel takes
SEED_HIGH = 2**62  # seeds are drawn from [0, 2**62): no two steps of a run share one in practice

_triton_module: Any = None  # neftune.kernels.triton_noise once imported
_triton_error: str | None = None  # why it could not be, once tried

__all__ = ["KERNELS", "KernelKind", "draw_seed", "fused_noise_add", "triton_available", "use_triton"]


def _load() -> Any:
    """The kernel module, importing Triton on the first call; None when Triton does not import."""
    global _triton_module, _triton_error
    if _triton_module is None and _triton_error is None:
        try:
            _triton_module = importlib.import_module("neftune.kernels.triton_noise")
        except Exception as error:  # ImportError, or a broken install failing as it loads its backend
            _triton_error = f"{type(error).__name__}: {error}"
    return _triton_module


def triton_available() -> bool:
    """Whether Triton imports here (tried once per process; `NEFTuneConfig(kernel="triton")` tries it up front, so
    torch.compile never traces the import)."""
    return _load() is not None


def _interpreted() -> bool:
    """Whether the kernel was compiled for Triton's CPU interpreter (TRITON_INTERPRET=1 when it was imported)."""
    return bool(_load().INTERPRETED)


def use_triton(kernel: str, output: torch.Tensor) -> bool:
    """Whether the hook should call `fused_noise_add` on the embeddings `output`, given `NEFTuneConfig.kernel`.

    `"auto"`: for plain float32/bfloat16/float16 CUDA tensors when Triton imports, in eager mode. A tensor subclass
    such as a DTensor keeps the torch path, and so does code under `torch.compile`, whose inductor fuses those ops
    into one kernel itself.
    `"torch"`: never. `"triton"`: always, or a `NEFTuneError` saying what is missing (Triton, a CUDA device, or
    `TRITON_INTERPRET=1` for CPU tensors).
    """
    if kernel == "torch":
        return False
    plain = type(output) is torch.Tensor
    if kernel == "auto":
        cuda = plain and output.device.type == "cuda" and output.dtype in DTYPES
        return cuda and not torch.compiler.is_compiling() and bool(triton_available())
    if not plain:
        raise NEFTuneError(
            f'NEFTune kernel="triton" got embeddings of type {type(output).__name__}; the kernel takes plain '
            'tensors. Use kernel="auto" or "torch" for tensor subclasses (DTensor, ...).'
        )
    if not triton_available():
        raise NEFTuneError(
            f'NEFTune kernel="triton" needs Triton, which does not import here ({_triton_error}); run: '
            'pip install "neftune[triton]", or use kernel="auto" to fall back to the torch path.'
        )
    if output.device.type != "cuda" and not _interpreted():
        raise NEFTuneError(
            f'NEFTune kernel="triton" got embeddings on {output.device}, but Triton kernels run on CUDA devices; on '
            "CPU only through Triton's interpreter: set TRITON_INTERPRET=1 before neftune's kernel is first used "
            '(for tests), or use kernel="auto" or "torch".'
        )
    return True


def draw_seed(device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """A 1-element int64 Philox seed on `device`, drawn from `generator` (None: torch's global RNG for `device`).

    Drawn on the device, so there is no host sync; seeded, per-rank, per-step and replayed noise follow from
    the generator exactly as for the torch path.
    """
    return torch.randint(0, SEED_HIGH, (1,), dtype=torch.int64, device=device, generator=generator)


def fused_noise_add(output: torch.Tensor, scale: torch.Tensor, kind: str, seed: torch.Tensor) -> torch.Tensor:
    """`output + scale * noise` in one pass, out of place; the gradient with respect to `output` is the identity.

    Args:
        output (`torch.Tensor`):
            The embeddings, `(..., hidden)` in float32, bfloat16 or float16, on a CUDA device (or the CPU under
            `TRITON_INTERPRET=1`).
        scale (`torch.Tensor`):
            float32 magnitude: 0-D for every token, or one per token, shaped `output.shape[:-1]` (the schedule
            factor and `embed_scale` included, 0 on padding, which is then left exactly as it was).
        kind (`str`):
            `"uniform"` (`Uniform(-1, 1)`), `"gaussian"` (std `1/sqrt(3)`) or `"symmetric"` (`+-1`), as in
            `neftune.noise`.
        seed (`torch.Tensor`):
            1-element int64 tensor on `output`'s device (see `draw_seed`); the same seed gives the same noise.

    Example:
        ```python
        seed = draw_seed(x.device, None)
        noisy = fused_noise_add(x, torch.tensor(5.0 / (x.shape[1] * x.shape[2]) ** 0.5), "uniform", seed)
        ```
    """
    if not triton_available():
        raise NEFTuneError(
            f'neftune\'s fused kernel needs Triton ({_triton_error}); run: pip install "neftune[triton]".'
        )
    if output.dtype not in DTYPES:
        raise NEFTuneError(f"fused_noise_add supports float32, bfloat16 and float16 embeddings, got {output.dtype}.")
    if scale.dtype != torch.float32 or (scale.dim() != 0 and tuple(scale.shape) != tuple(output.shape[:-1])):
        raise NEFTuneError(
            f"fused_noise_add needs a float32 scale that is 0-D or shaped {tuple(output.shape[:-1])}, got "
            f"{scale.dtype} of shape {tuple(scale.shape)}."
        )
    if kind not in NOISE_KINDS:
        raise NEFTuneError(f"fused_noise_add kind must be one of {NOISE_KINDS}, got {kind!r}.")
    if seed.dtype != torch.int64 or seed.numel() != 1 or seed.device != output.device:
        raise NEFTuneError(
            f"fused_noise_add needs a 1-element int64 seed on {output.device} (see draw_seed), got {seed.dtype} "
            f"of shape {tuple(seed.shape)} on {seed.device}."
        )
    scale = scale.to(output.device).contiguous()
    # the module global, not an import statement: torch.compile traces this function
    result: torch.Tensor = _triton_module.FusedNoiseAdd.apply(output.contiguous(), scale, kind, seed)
    return result
