"""GPU-only checks (marker `gpu`; run with `pytest -m gpu` on a CUDA machine). Skipped without CUDA.

Record results in docs/GPU_RESULTS.md with date and versions when they are run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_hook_has_no_host_sync(dtype: torch.dtype) -> None:
    from helpers import EmbeddingOnlyModel, padding_mask

    from neftune import apply_neftune

    model = EmbeddingOnlyModel(hidden=256, dtype=dtype).cuda()
    handle = apply_neftune(model, 5.0, track_stats=True)
    model.train()
    ids = torch.zeros(4, 128, dtype=torch.long, device="cuda")
    mask = padding_mask([128, 100, 50, 3], 128).cuda()
    position_ids = torch.arange(128, device="cuda").repeat(4, 1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            model(ids, attention_mask=mask)
            model(ids, position_ids=position_ids)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert handle.read_stats().noised_calls == 6


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
