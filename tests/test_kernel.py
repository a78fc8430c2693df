"""The fused Triton kernel, run on CPU tensors by Triton's interpreter (TRITON_INTERPRET=1), against the torch path.

Statistical checks use fixed seeds and tolerances of at least 5 standard errors of the estimate, stated at each
check; shapes are small because the interpreter runs every program in Python.
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

# Before neftune's kernel module (and so triton.jit) is imported. Not on a CUDA machine: there the kernel must
# compile for the GPU (tests/test_gpu.py), and these CPU tests skip.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from helpers import EmbeddingOnlyModel, capture_output, measured_kernel_noise, padding_mask

import neftune.kernels as kernels
from neftune import NEFTuneConfig, NEFTuneError, apply_neftune
from neftune.kernels import draw_seed, fused_noise_add, use_triton
from neftune.noise import NOISE_KINDS

ALPHA = 5.0
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Rounding of `x + noise` to the output dtype, relative to the noise (embeddings are ~0.01, noise ~0.3). The
# interpreter rounds float32 to bfloat16 toward zero (CUDA: to nearest), up to 2^-7 relative.
ROUNDING = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def _interpreter_ready() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed (pip install 'neftune[triton]')"
    if torch.cuda.is_available():
        return "a CUDA device is present: the kernel is tested compiled, by tests/test_gpu.py (pytest -m gpu)"
    module = sys.modules.get("neftune.kernels.triton_noise")
    if module is not None and not module.INTERPRETED:
        return "neftune's kernel was imported before TRITON_INTERPRET=1 was set"
    return None


_skip_reason = _interpreter_ready()
needs_interpreter = pytest.mark.skipif(_skip_reason is not None, reason=_skip_reason or "")


def seed_of(value: int) -> torch.Tensor:
    return torch.tensor([value], dtype=torch.int64)


# --- the kernel alone --------------------------------------------------------------------------------------------


@needs_interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_moments_of_each_kind(kind: str, dtype: torch.dtype) -> None:
    zeros = torch.zeros(4, 64, 256, dtype=dtype)
    unit = fused_noise_add(zeros, torch.tensor(1.0), kind, seed_of(11)).double().flatten()
    n = unit.numel()
    # population (variance, 4th moment) of each kind: uniform 1/3 and 1/5; gaussian 1/3 and 3/9; +-1: 1 and 1
    variance, fourth = {"uniform": (1 / 3, 1 / 5), "gaussian": (1 / 3, 1 / 3), "symmetric": (1.0, 1.0)}[kind]
    assert abs(unit.mean().item()) < 5 * math.sqrt(variance / n)  # 5 standard errors of the mean
    var_se = math.sqrt((fourth - variance**2) / n) if kind != "symmetric" else 2 / math.sqrt(n)
    assert abs(unit.square().mean().item() - variance) < 5 * var_se + variance * ROUNDING[dtype]
    if kind == "uniform":
        assert unit.abs().max().item() <= 1.0
        assert unit.abs().max().item() > 0.99
    elif kind == "symmetric":
        assert set(unit.unique().tolist()) == {-1.0, 1.0}
    else:
        # E[u^4] separates the gaussian (1/3) from the uniform (1/5); its standard error is sqrt(E[u^8] - 1/9)/sqrt(n)
        assert abs(unit.pow(4).mean().item() - 1 / 3) < 5 * math.sqrt(105 / 81 - 1 / 9) / math.sqrt(n)
        assert unit.abs().max().item() > 2.0  # unbounded: about 7e-4 of normal draws fall past 3.4 std


@needs_interpreter
def test_the_kernel_has_a_draw_for_every_noise_kind_and_refuses_others() -> None:
    module = sys.modules["neftune.kernels.triton_noise"]
    assert tuple(module.KIND_INDEX) == NOISE_KINDS
    assert len(set(module.KIND_INDEX.values())) == len(NOISE_KINDS)
    with pytest.raises(
        NEFTuneError, match=r"kernel draws noise of kinds \('uniform', 'gaussian', 'symmetric'\), got 'x'"
    ):
        module.launch(torch.zeros(1, 2, 4), torch.tensor(1.0), "x", seed_of(0))
    # the kernel's own last branch (the interpreter wraps the assertion in its InterpreterError)
    with pytest.raises(Exception, match="KIND is not an index of KIND_INDEX"):
        unknown = max(module.KIND_INDEX.values()) + 1
        module.noise_add_kernel[(1, 1)](
            *(torch.zeros(1, 4), torch.empty(1, 4), torch.tensor(1.0), seed_of(0), 1, 4, 1),
            PER_TOKEN=False,
            KIND=unknown,
            BLOCK_ROWS=1,
            BLOCK_Q=1,
        )


@needs_interpreter
def test_columns_and_tokens_are_independent() -> None:
    # One Philox call feeds four column quarters: they must not be copies or correlated, nor any two tokens.
    hidden = 64
    unit = fused_noise_add(torch.zeros(2, 128, hidden), torch.tensor(1.0), "uniform", seed_of(3)).view(-1, hidden)
    quarter = hidden // 4
    n = unit.shape[0] * quarter
    for k in range(1, 4):
        a, b = unit[:, :quarter].flatten(), unit[:, k * quarter : (k + 1) * quarter].flatten()
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 5 / math.sqrt(n)
    assert unit.unique(dim=0).shape[0] == unit.shape[0]
    # no element shares a Philox counter with another: chance float collisions are ~1e-3 of 16,384 draws
    assert unit.unique().numel() > 0.995 * unit.numel()


@needs_interpreter
def test_same_seed_same_noise_other_seed_other_noise_and_no_dependence_on_input() -> None:
    zeros = torch.zeros(3, 20, 30)
    scale = torch.tensor(0.5)
    first = fused_noise_add(zeros, scale, "gaussian", seed_of(7))
    assert torch.equal(first, fused_noise_add(zeros, scale, "gaussian", seed_of(7)))
    other = fused_noise_add(zeros, scale, "gaussian", seed_of(8))
    assert (first == other).float().mean().item() < 1e-3
    x = torch.randn(3, 20, 30)
    torch.testing.assert_close(fused_noise_add(x, scale, "gaussian", seed_of(7)) - x, first, rtol=0, atol=1e-6)


@needs_interpreter
@pytest.mark.parametrize("dtype", DTYPES)
def test_per_token_scale_zero_leaves_tokens_exactly_unchanged(dtype: torch.dtype) -> None:
    x = (0.01 * torch.randn(2, 9, 30)).to(dtype)  # hidden 30: the last column quarter is partly masked
    scale = torch.full((2, 9), 0.25)
    scale[0, 4:] = 0.0
    scale[1, :2] = 0.0
    out = fused_noise_add(x, scale, "uniform", seed_of(1))
    assert out.dtype == dtype
    zero = scale == 0
    assert torch.equal(out[zero], x[zero])
    noise = out.float() - x.float()
    assert (noise[~zero] != 0).any(0).all()  # every column is noised, the masked-off quarter's last too
    assert (noise[~zero] != 0).float().mean().item() > 0.98  # only noise below x's rounding step is lost
    assert noise[~zero].abs().max().item() <= 0.25 * (1 + ROUNDING[dtype]) + 4 * ROUNDING[dtype]


@needs_interpreter
@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_is_the_identity_and_nothing_is_saved(dtype: torch.dtype) -> None:
    x = torch.randn(2, 5, 12).to(dtype).requires_grad_()
    out = fused_noise_add(x, torch.full((2, 5), 0.3), "uniform", seed_of(2))
    assert out.grad_fn is not None and out.grad_fn.saved_tensors == ()
    grad = torch.randn(2, 5, 12).to(dtype)
    out.backward(grad)
    assert x.grad is not None and torch.equal(x.grad, grad)


@needs_interpreter
def test_empty_batch() -> None:
    assert fused_noise_add(torch.zeros(0, 4, 8), torch.tensor(1.0), "uniform", seed_of(0)).shape == (0, 4, 8)


@needs_interpreter
def test_bad_arguments_are_named() -> None:
    x = torch.zeros(2, 3, 4)
    with pytest.raises(NEFTuneError, match="float32 scale that is 0-D or shaped"):
        fused_noise_add(x, torch.ones(2, 3, 4), "uniform", seed_of(0))
    with pytest.raises(NEFTuneError, match="1-element int64 seed"):
        fused_noise_add(x, torch.tensor(1.0), "uniform", torch.tensor([0, 1]))
    with pytest.raises(NEFTuneError, match="kind must be one of"):
        fused_noise_add(x, torch.tensor(1.0), "laplace", seed_of(0))
    with pytest.raises(NEFTuneError, match="float64"):
        fused_noise_add(x.double(), torch.tensor(1.0), "uniform", seed_of(0))


# --- through apply_neftune, against the torch path ---------------------------------------------------------------

HIDDEN = 62  # not a multiple of 16: masked columns; every segment has >= 5 * 62 elements, so its max |noise| is
# within 3% of the bound unless all of them miss the top 3% (probability 0.97^310 < 1e-4)
LENGTHS = [16, 11, 5, 7]
SEQ_LEN = 16


def noise_through_hook(
    kernel: str, dtype: torch.dtype, rng_seed: int, layout: str, **config: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise in float32, per-token bound alpha / sqrt(L * d)) for a padded or a packed batch."""
    torch.manual_seed(0)
    model = EmbeddingOnlyModel(hidden=HIDDEN, dtype=dtype)
    with torch.no_grad():
        model.embed_tokens.weight.mul_(0.01)  # small embeddings: the dtype's rounding stays far below the noise
    ids = torch.randint(0, 64, (len(LENGTHS), SEQ_LEN))
    if layout == "padded":
        inputs = {"attention_mask": padding_mask(LENGTHS, SEQ_LEN)}
        lengths = inputs["attention_mask"].sum(1, keepdim=True).expand(-1, SEQ_LEN).double()
        lengths = lengths * inputs["attention_mask"]
    else:  # the same sequences packed into one row, segments marked by restarting position ids
        ids = ids.flatten()[None, : sum(LENGTHS)]
        inputs = {"position_ids": torch.cat([torch.arange(n) for n in LENGTHS])[None]}
        lengths = torch.cat([torch.full((n,), float(n), dtype=torch.float64) for n in LENGTHS])[None]
    noise_config = NEFTuneConfig(alpha=ALPHA, kernel=kernel, **config)  # type: ignore[arg-type]
    noise = measured_kernel_noise(model, ids, inputs, noise_config, rng_seed, dtype)
    bound = torch.where(lengths > 0, ALPHA / torch.sqrt(lengths.clamp_min(1) * HIDDEN), 0.0)
    return noise, bound


def segments(bound: torch.Tensor) -> list[tuple[int, slice]]:
    """(row, token slice) of each sequence in the batch, from the bound (one value per segment)."""
    found = []
    for row in range(bound.shape[0]):
        start = 0
        values = bound[row].tolist()
        while start < len(values):
            if values[start] == 0:
                start += 1
                continue
            length = round(ALPHA**2 / (values[start] ** 2 * HIDDEN))
            found.append((row, slice(start, start + length)))
            start += length
    return found


@needs_interpreter
@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_per_token_bounds_and_padding_match_the_torch_path(layout: str, dtype: torch.dtype) -> None:
    fused, bound = noise_through_hook("triton", dtype, 0, layout)
    reference, reference_bound = noise_through_hook("torch", dtype, 0, layout)
    assert torch.equal(bound, reference_bound)
    ratio = fused.double().abs() / bound.clamp_min(1e-30).unsqueeze(-1)
    padding = bound == 0
    assert torch.equal(fused[padding], torch.zeros_like(fused[padding]))  # exactly no noise on padding
    assert torch.equal(reference[padding], fused[padding])
    assert ratio[~padding].max().item() <= 1 + ROUNDING[dtype]
    found = segments(bound)
    assert len(found) == len(LENGTHS)
    for row, tokens in found:
        assert ratio[row, tokens].max().item() >= 0.97  # the bound is reached within 3%
        # same spread as the torch path: the rms of >= 310 uniform draws has a 2.5% standard error
        rms = fused[row, tokens].square().mean().sqrt() / reference[row, tokens].square().mean().sqrt()
        assert 0.85 < rms.item() < 1.15


@needs_interpreter
def test_seeded_and_global_rng_noise_are_reproducible() -> None:
    first, _ = noise_through_hook("triton", torch.float32, 0, "padded", seed=3)
    again, _ = noise_through_hook("triton", torch.float32, 99, "padded", seed=3)  # global RNG differs: no effect
    assert torch.equal(first, again)
    other, _ = noise_through_hook("triton", torch.float32, 0, "padded", seed=4)
    assert not torch.equal(first, other)
    global_a, _ = noise_through_hook("triton", torch.float32, 5, "padded")
    global_b, _ = noise_through_hook("triton", torch.float32, 5, "padded")
    global_c, _ = noise_through_hook("triton", torch.float32, 6, "padded")
    assert torch.equal(global_a, global_b) and not torch.equal(global_a, global_c)


@needs_interpreter
def test_seeded_noise_changes_with_the_step_and_replays_it() -> None:
    torch.manual_seed(0)
    model = EmbeddingOnlyModel(hidden=HIDDEN)
    ids = torch.randint(0, 64, (2, 8))
    handle = apply_neftune(model, NEFTuneConfig(kernel="triton", seed=1))
    model.train()
    with torch.no_grad():
        handle.set_step(5)
        step5 = model(ids)
        handle.set_step(6)
        step6 = model(ids)
        handle.set_step(5)
        replay = model(ids)
    assert torch.equal(step5, replay) and not torch.equal(step5, step6)


@needs_interpreter
def test_schedule_factor_scales_the_kernel_noise() -> None:
    torch.manual_seed(0)
    model = EmbeddingOnlyModel(hidden=HIDDEN)
    ids = torch.randint(0, 64, (1, 16))
    handle = apply_neftune(model, NEFTuneConfig(alpha=ALPHA, kernel="triton", schedule="linear"))
    model.eval()
    clean = model(ids)
    model.train()
    handle.set_progress(0.75)  # alpha * 0.25
    with torch.no_grad():
        noise = model(ids) - clean
    expected = 0.25 * ALPHA / math.sqrt(16 * HIDDEN)
    assert expected * 0.97 <= noise.abs().max().item() <= expected * (1 + 1e-5)


@needs_interpreter
@pytest.mark.parametrize("kind", ["uniform", "symmetric"])
def test_stats_from_the_scale_match_the_noise(kind: str) -> None:
    torch.manual_seed(0)
    model = EmbeddingOnlyModel(hidden=HIDDEN)
    ids = torch.randint(0, 64, (4, SEQ_LEN))
    mask = padding_mask(LENGTHS, SEQ_LEN)
    model.eval()
    clean = model(ids, attention_mask=mask)
    handle = apply_neftune(model, NEFTuneConfig(kernel="triton", noise=kind), track_stats=True)  # type: ignore[arg-type]
    model.train()
    with torch.no_grad():
        noise = model(ids, attention_mask=mask) - clean
    stats = handle.read_stats()
    real = mask.bool()
    measured = noise[real].square().mean().sqrt().item()
    assert stats.embed_rms == pytest.approx(clean[real].square().mean().sqrt().item(), rel=1e-5)
    # symmetric: |noise| is exactly the scale, so expected = measured; uniform: 2,418 draws, rms s.e. about 1%
    assert stats.noise_rms == pytest.approx(measured, rel=1e-5 if kind == "symmetric" else 0.07)
    assert stats.noised_calls == 1


@needs_interpreter
def test_gradients_through_the_hook_equal_the_clean_gradients() -> None:
    torch.manual_seed(0)
    model = EmbeddingOnlyModel(hidden=HIDDEN)
    ids = torch.randint(0, 64, (2, 8))
    weights = torch.randn(2, 8, HIDDEN)
    model.eval()
    (model(ids) * weights).sum().backward()
    clean_grad = model.embed_tokens.weight.grad.clone()
    model.zero_grad()
    apply_neftune(model, NEFTuneConfig(kernel="triton"))
    model.train()
    (model(ids) * weights).sum().backward()
    assert torch.equal(model.embed_tokens.weight.grad, clean_grad)


@needs_interpreter
def test_padded_scaling_on_the_kernel_noises_every_position_by_the_padded_length() -> None:
    noise, _ = noise_through_hook("triton", torch.float32, 0, "padded", scaling="padded", noise="symmetric")
    expected = ALPHA / math.sqrt(SEQ_LEN * HIDDEN)
    torch.testing.assert_close(noise.abs(), torch.full_like(noise, expected), rtol=0, atol=1e-5)


@needs_interpreter
def test_auto_keeps_padded_uniform_bit_exact_and_sends_the_rest_to_the_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pretend the CPU is a CUDA device with Triton, so "auto" picks the kernel.
    import neftune.hook

    monkeypatch.setattr(neftune.hook, "use_triton", lambda kernel, output: kernel != "torch")
    padded_auto, _ = noise_through_hook("auto", torch.float32, 0, "padded", scaling="padded")
    padded_torch, _ = noise_through_hook("torch", torch.float32, 0, "padded", scaling="padded")
    assert torch.equal(padded_auto, padded_torch)
    sequence_auto, _ = noise_through_hook("auto", torch.float32, 0, "padded")
    sequence_fused, _ = noise_through_hook("triton", torch.float32, 0, "padded")
    sequence_torch, _ = noise_through_hook("torch", torch.float32, 0, "padded")
    assert torch.equal(sequence_auto, sequence_fused) and not torch.equal(sequence_auto, sequence_torch)


@needs_interpreter
def test_tiny_llama_padded_batch_with_the_kernel() -> None:
    pytest.importorskip("transformers")
    from neftune.toy import tiny_llama

    model = tiny_llama(vocab_size=128, hidden_size=32)
    embedding = model.get_input_embeddings()
    lengths, seq_len, hidden = [12, 9, 5], 12, 32
    ids = torch.randint(2, 128, (3, seq_len), generator=torch.Generator().manual_seed(0))
    mask = padding_mask(lengths, seq_len)
    model.eval()
    with torch.no_grad(), capture_output(embedding) as clean:
        model(input_ids=ids, attention_mask=mask)
    handle = apply_neftune(model, NEFTuneConfig(alpha=ALPHA, kernel="triton"))
    model.train()
    with capture_output(embedding) as noisy:
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
    loss.backward()
    assert handle.counts.noised == 1 and torch.isfinite(loss)
    noise = noisy[0] - clean[0]
    for row, length in enumerate(lengths):
        bound = ALPHA / math.sqrt(length * hidden)
        assert bound * 0.97 <= noise[row, :length].abs().max().item() <= bound * (1 + 1e-5)
        assert torch.equal(noise[row, length:], torch.zeros_like(noise[row, length:]))
    assert embedding.weight.grad is not None and torch.isfinite(embedding.weight.grad).all()


# --- choosing the kernel -----------------------------------------------------------------------------------------


def test_kernel_choice_is_validated() -> None:
    with pytest.raises(NEFTuneError, match=r"kernel must be one of \('auto', 'torch', 'triton'\), got 'cuda'"):
        NEFTuneConfig(kernel="cuda")  # type: ignore[arg-type]


def test_auto_and_torch_never_use_the_kernel_on_cpu() -> None:
    cpu = torch.zeros(1, 2, 4)
    assert not use_triton("auto", cpu) and not use_triton("torch", cpu)


def test_forcing_the_kernel_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.zeros(1, 2, 4)
    monkeypatch.setattr(kernels, "triton_available", lambda: True)
    monkeypatch.setattr(kernels, "_interpreted", lambda: False)
    with pytest.raises(NEFTuneError, match="TRITON_INTERPRET=1"):
        use_triton("triton", cpu)
    monkeypatch.setattr(kernels, "triton_available", lambda: False)
    with pytest.raises(NEFTuneError, match=r'pip install "neftune\[triton\]"'):
        use_triton("triton", cpu)
    with pytest.raises(NEFTuneError, match="plain tensors"):
        use_triton("triton", torch.nn.Parameter(cpu))


def test_seed_is_drawn_from_the_given_generator() -> None:
    first = draw_seed(torch.device("cpu"), torch.Generator().manual_seed(1))
    assert first.dtype == torch.int64 and first.shape == (1,)
    assert torch.equal(first, draw_seed(torch.device("cpu"), torch.Generator().manual_seed(1)))
    assert not torch.equal(first, draw_seed(torch.device("cpu"), torch.Generator().manual_seed(2)))


def test_cli_and_sft_config_carry_the_kernel() -> None:
    from neftune.cli.commands import build_parser, config_from_arguments

    assert config_from_arguments(build_parser().parse_args(["demo", "--kernel", "torch"])).kernel == "torch"
    assert config_from_arguments(build_parser().parse_args(["demo"])).kernel == "auto"
    pytest.importorskip("trl")
    from types import SimpleNamespace

    from neftune.integrations.sft_trainer import neftune_config_from_args

    assert neftune_config_from_args(SimpleNamespace(neftune_kernel="triton")).kernel == "triton"
    with pytest.raises(NEFTuneError, match="neftune_kernel must be one of"):
        neftune_config_from_args(SimpleNamespace(neftune_kernel="gpu"))


def test_cpu_training_with_auto_never_imports_triton() -> None:
    import subprocess

    code = (
        "import sys, torch; sys.path.insert(0, 'tests'); from helpers import EmbeddingOnlyModel;"
        "from neftune import apply_neftune; m = EmbeddingOnlyModel(); apply_neftune(m, 5.0); m.train();"
        "m(torch.zeros(2, 4, dtype=torch.long)); print('triton' in sys.modules)"
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.path.join(root, "src") + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env, check=True
    )
    assert result.stdout.strip() == "False"


def test_auto_keeps_the_torch_path_for_dtypes_the_kernel_does_not_take(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "triton_available", lambda: True)
    cuda_like = torch.zeros(1, 2, 4, dtype=torch.float64, device="meta")
    # pretend every tensor is on CUDA (this machine may have none): only the dtype decides here
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("cuda")))
    assert not use_triton("auto", cuda_like)
    assert use_triton("auto", cuda_like.to(torch.bfloat16))


COMPILE_FOR_HOPPER = """
import itertools, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from neftune.kernels.triton_noise import NUM_WARPS, noise_add_kernel
compiled = []
for dtype, per_token, kind in [("bf16", True, 0), ("fp16", False, 2), ("fp32", True, 1)]:
    signature = {"x_ptr": "*" + dtype, "out_ptr": "*" + dtype, "scale_ptr": "*fp32", "seed_ptr": "*i64",
                 "n_rows": "i32", "hidden": "i32", "quarter": "i32", "PER_TOKEN": "constexpr",
                 "KIND": "constexpr", "BLOCK_ROWS": "constexpr", "BLOCK_Q": "constexpr"}
    constants = {"PER_TOKEN": per_token, "KIND": kind, "BLOCK_ROWS": 2, "BLOCK_Q": 512}
    kernel = triton.compile(ASTSource(noise_add_kernel, signature, constants), target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": NUM_WARPS})
    compiled.append(len(kernel.asm["cubin"]))
print(json.dumps(compiled))
"""


@pytest.mark.slow
def test_kernel_compiles_for_hopper_without_a_gpu() -> None:
    # The interpreter skips the compiler's checks (e.g. only constexpr globals in a kernel): compile the real
    # thing for sm_90 (H100/H200) on the CPU, down to a cubin, with Triton's bundled LLVM and ptxas.
    import json
    import subprocess

    pytest.importorskip("triton.backends.nvidia", reason="triton without its CUDA backend")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.path.join(root, "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", COMPILE_FOR_HOPPER], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sizes = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(sizes) == 3 and all(size > 10_000 for size in sizes)


@needs_interpreter
@pytest.mark.parametrize("seed", [None, 11])
def test_checkpoint_recompute_replays_the_kernels_noise(seed: int | None) -> None:
    """The kernel's seed is drawn from the generator in force, so the recompute in backward replays it exactly."""
    from test_hardening_math import CheckpointedNet, _gradients

    config = NEFTuneConfig(alpha=ALPHA, kernel="triton", seed=seed)
    expected, _ = _gradients(CheckpointedNet("plain"), config)
    got, counts = _gradients(CheckpointedNet("non_reentrant"), config)
    assert max(float((a - b).abs().max()) for a, b in zip(got, expected, strict=True)) == 0.0
    assert counts.noised == 2
