"""GPU-only checks (marker `gpu`; run with `make gpu-test`, i.e. `pytest -m gpu`, on a CUDA machine). Skipped
without CUDA; the Triton kernel's tests also without Triton.

Record results in docs/GPU_RESULTS.md with date and versions when they are run.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import EmbeddingOnlyModel, capture_output, measured_kernel_noise, padding_mask

from neftune import NEFTuneConfig, apply_neftune

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
ROOT = Path(__file__).resolve().parent.parent
ALPHA = 5.0
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="pip install 'neftune[triton]'")
KERNELS = ["torch", pytest.param("triton", marks=needs_triton)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Rounding of `x + noise` to nearest in the output dtype, relative to the noise (embeddings ~1e-4, noise ~1e-2).
ROUNDING = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_hook_has_no_host_sync(dtype: torch.dtype, kernel: str) -> None:
    model = EmbeddingOnlyModel(hidden=256, dtype=dtype).cuda()
    handle = apply_neftune(model, NEFTuneConfig(kernel=kernel), track_stats=True)  # type: ignore[arg-type]
    model.train()
    ids = torch.zeros(4, 128, dtype=torch.long, device="cuda")
    mask = padding_mask([128, 100, 50, 3], 128).cuda()
    position_ids = torch.arange(128, device="cuda").repeat(4, 1)
    model(ids, attention_mask=mask)  # warm-up: compiles the kernel
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            model(ids, attention_mask=mask)
            model(ids, position_ids=position_ids)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert handle.read_stats().noised_calls == 7


def cuda_noise(
    kernel: str, dtype: torch.dtype, layout: str, rng_seed: int = 0, **config: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise in float32, per-token bound alpha / sqrt(L * d)) on CUDA for a padded or a packed batch."""
    hidden, lengths = 1024, [512, 300, 77, 5]
    torch.manual_seed(0)
    model = EmbeddingOnlyModel(vocab=512, hidden=hidden, dtype=dtype).cuda()
    with torch.no_grad():
        model.embed_tokens.weight.mul_(1e-4)  # bf16 rounding of x + noise << noise
    if layout == "padded":
        ids = torch.randint(0, 512, (len(lengths), 512), device="cuda")
        mask = padding_mask(lengths, 512).cuda()
        inputs = {"attention_mask": mask}
        per_token = mask.sum(1, keepdim=True).double() * mask
    else:
        ids = torch.randint(0, 512, (1, sum(lengths)), device="cuda")
        inputs = {"position_ids": torch.cat([torch.arange(n) for n in lengths])[None].cuda()}
        per_token = torch.cat([torch.full((n,), float(n), dtype=torch.float64) for n in lengths])[None].cuda()
    noise_config = NEFTuneConfig(alpha=ALPHA, kernel=kernel, **config)  # type: ignore[arg-type]
    noise = measured_kernel_noise(model, ids, inputs, noise_config, rng_seed, dtype)
    bound = torch.where(per_token > 0, ALPHA / torch.sqrt(per_token.clamp_min(1) * hidden), 0.0)
    return noise, bound


@needs_triton
@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_against_the_torch_path_on_cuda(dtype: torch.dtype, layout: str) -> None:
    fused, bound = cuda_noise("triton", dtype, layout)
    reference, _ = cuda_noise("torch", dtype, layout)
    real = bound > 0
    assert torch.equal(fused[~real], torch.zeros_like(fused[~real]))  # exactly no noise on padding
    ratio = fused.double().abs() / bound.clamp_min(1e-30).unsqueeze(-1)
    assert ratio[real].max().item() <= 1 + ROUNDING[dtype]
    for tokens in (bound[..., None] == value for value in bound[real].unique()):  # one mask per length L
        rows = tokens.expand_as(fused)
        assert ratio[rows].max().item() >= 0.97
        rms = fused[rows].square().mean().sqrt() / reference[rows].square().mean().sqrt()
        assert abs(rms.item() - 1) < 0.05  # >= 5,120 draws per length: rms ratio s.e. about 1.3%
    unit = fused[real] / bound[real].unsqueeze(-1).float()
    assert abs(unit.mean().item()) < 5 * math.sqrt(1 / 3 / unit.numel())


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["uniform", "gaussian", "symmetric"])
def test_kernel_moments_on_cuda(kind: str, dtype: torch.dtype) -> None:
    from neftune.kernels import fused_noise_add

    seed = torch.tensor([5], dtype=torch.int64, device="cuda")
    unit = fused_noise_add(torch.zeros(8, 512, 1024, dtype=dtype, device="cuda"), torch.tensor(1.0), kind, seed)
    unit = unit.double().flatten()
    n = unit.numel()
    variance, fourth = {"uniform": (1 / 3, 1 / 5), "gaussian": (1 / 3, 1 / 3), "symmetric": (1.0, 1.0)}[kind]
    assert abs(unit.mean().item()) < 5 * math.sqrt(variance / n)
    var_se = math.sqrt((fourth - variance**2) / n) if kind != "symmetric" else 2 / math.sqrt(n)
    assert abs(unit.square().mean().item() - variance) < 5 * var_se + variance * ROUNDING[dtype] / 4
    if kind == "uniform":
        assert 0.999 < unit.abs().max().item() <= 1.0
    if kind == "symmetric":
        assert set(unit.unique().tolist()) == {-1.0, 1.0}
    if kind == "gaussian":
        assert abs(unit.pow(4).mean().item() - 1 / 3) < 5 * math.sqrt(105 / 81 - 1 / 9) / math.sqrt(n)


@needs_triton
def test_kernel_seed_reproducibility_and_identity_gradient_on_cuda() -> None:
    first, _ = cuda_noise("triton", torch.bfloat16, "padded", rng_seed=0, seed=3)
    again, _ = cuda_noise("triton", torch.bfloat16, "padded", rng_seed=1, seed=3)
    other, _ = cuda_noise("triton", torch.bfloat16, "padded", rng_seed=0, seed=4)
    assert torch.equal(first, again) and not torch.equal(first, other)
    from neftune.kernels import draw_seed, fused_noise_add

    x = torch.randn(4, 64, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    out = fused_noise_add(x, torch.full((4, 64), 0.1, device="cuda"), "uniform", draw_seed(x.device, None))
    grad = torch.randn_like(out)
    out.backward(grad)
    assert x.grad is not None and torch.equal(x.grad, grad)


@pytest.mark.parametrize("kernel", ["auto", *KERNELS])  # auto: the torch ops, fused by inductor
def test_torch_compile_fullgraph_on_cuda(kernel: str) -> None:
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    model = EmbeddingOnlyModel(vocab=512, hidden=512, dtype=torch.bfloat16).cuda()
    with torch.no_grad():
        model.embed_tokens.weight.mul_(1e-4)  # bf16 rounding of x + noise << noise
    ids = torch.randint(0, 512, (4, 256), device="cuda")
    mask = padding_mask([256, 200, 100, 10], 256).cuda()
    model.eval()
    clean = model(ids, attention_mask=mask).float()
    apply_neftune(model, NEFTuneConfig(alpha=ALPHA, kernel=kernel))  # type: ignore[arg-type]
    model.train()
    backend = CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    noises = [compiled(ids, attention_mask=mask).float() - clean for _ in range(3)]
    assert backend.frame_count == 1  # no recompile from one step to the next
    assert not torch.equal(noises[0], noises[1])  # fresh noise every call
    bound = ALPHA / torch.sqrt(mask.sum(1).double() * 512)
    for noise in noises:
        assert torch.equal(noise[mask == 0], torch.zeros_like(noise[mask == 0]))
        ratio = noise.double().abs().amax(-1) / bound[:, None]
        assert ratio[mask == 1].max().item() <= 1 + ROUNDING[torch.bfloat16]
        assert ratio[mask == 1].max().item() >= 0.97
    if kernel != "triton":
        return  # the torch ops under inductor are also covered on CPU (tests/test_support_matrix.py)
    from neftune.toy import tiny_llama

    llama = tiny_llama(vocab_size=512, hidden_size=64).cuda().to(torch.bfloat16)
    apply_neftune(llama, NEFTuneConfig(alpha=ALPHA, kernel=kernel))  # type: ignore[arg-type]
    llama.train()
    compiled_llama = torch.compile(llama)
    for _ in range(2):
        loss = compiled_llama(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        assert torch.isfinite(loss)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("engine", ["ddp", "fsdp2"])
def test_single_gpu_process_group(engine: str, kernel: str) -> None:
    """DDP and FSDP2 with world size 1 on one GPU (nccl): the hook fires inside the wrapped model, in bounds."""
    import torch.distributed as dist

    from neftune.toy import tiny_llama

    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        model = tiny_llama(vocab_size=512, hidden_size=64).cuda()
        embedding = model.get_input_embeddings()
        if engine == "ddp":
            wrapped: torch.nn.Module = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0])
        else:
            from torch.distributed.fsdp import fully_shard

            fully_shard(model)
            wrapped = model
        ids = torch.randint(0, 512, (3, 64), device="cuda")
        mask = padding_mask([64, 40, 9], 64).cuda()
        wrapped.eval()
        with torch.no_grad(), capture_output(embedding) as clean:
            wrapped(input_ids=ids, attention_mask=mask)
        handle = apply_neftune(wrapped, NEFTuneConfig(alpha=ALPHA, kernel=kernel))  # type: ignore[arg-type]
        wrapped.train()
        with capture_output(embedding) as noisy:
            loss = wrapped(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        assert handle.counts.noised == 1 and torch.isfinite(loss)
        noise = (noisy[0] - clean[0]).float()
        for row, length in enumerate([64, 40, 9]):
            bound = ALPHA / math.sqrt(length * 64)
            assert bound * 0.97 <= noise[row, :length].abs().max().item() <= bound * (1 + 1e-5)
            assert torch.equal(noise[row, length:], torch.zeros_like(noise[row, length:]))
        handle.remove()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("config", ["ddp.yaml", "fsdp2.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_accelerate_engines(config: str, tmp_path: Path) -> None:
    if "deepspeed" in config:
        pytest.importorskip("deepspeed")
    processes = torch.cuda.device_count()
    if processes < 2 and config != "ddp.yaml":
        pytest.skip("needs 2 GPUs")
    command = [
        shutil.which("accelerate") or "accelerate",
        "launch",
        "--config_file",
        str(ROOT / "examples/accelerate" / config),
        "--num_processes",
        str(max(processes, 1)),
        str(ROOT / "examples/sft_trl.py"),
        "--steps",
        "10",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "noise/signal" in result.stdout
