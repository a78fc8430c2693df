"""Two real processes on CPU with gloo, launched by torchrun: DDP (Trainer and accelerate), FSDP2, rank independence.

Each launch has a hard timeout so a hang fails the test instead of stalling CI.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")
WORKER = Path(__file__).resolve().parent / "distributed" / "worker.py"
TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(mode: str, out_dir: Path, *extra: str) -> list[dict[str, Any]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(WORKER),
        mode,
        str(out_dir),
        *extra,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((out_dir / f"{mode}-rank{rank}.json").read_text()) for rank in (0, 1)]


def test_ddp_through_the_trainer(tmp_path: Path) -> None:
    for rank in launch("trainer", tmp_path):
        assert rank["world_size"] == 2 and rank["wrapped"] == "DistributedDataParallel"
        assert rank["hooks_per_step"] == [1, 1, 1, 1]  # fires on every rank, never stacked
        assert rank["noised_calls"] == [2.0, 2.0]
        assert not rank["active_after"]
        assert all(0.03 < value < 0.15 for value in rank["noise_rms"])


def test_raw_accelerate_loop_accepts_the_wrapped_model(tmp_path: Path) -> None:
    for rank in launch("accelerate", tmp_path):
        assert rank["wrapped"] == "DistributedDataParallel"
        assert rank["hooked"] == ["module.model.embed_tokens"]
        assert rank["noised"] == 3 and rank["removed"] == 1 and not rank["active_after"]


def test_fsdp2_hook_sees_the_full_hidden_size(tmp_path: Path) -> None:
    for rank in launch("fsdp2", tmp_path):
        assert "Shard(dim=0)" in rank["weight_placements"]  # the weight is sharded...
        assert rank["hidden"] == 32  # ...the embedding output is whole
        assert all(0.97 <= ratio <= 1.0 + 1e-6 for ratio in rank["max_over_bound"])  # the per-rank bound holds
        assert rank["pads_untouched"] and rank["removed"] == 1


def test_ranks_draw_different_noise_reproducibly(tmp_path: Path) -> None:
    first = launch("independence", tmp_path / "a", "none")
    again = launch("independence", tmp_path / "b", "none")
    seeded = launch("independence", tmp_path / "c", "7")
    for run in (first, seeded):
        assert all(rank["ranks_differ"] for rank in run)  # every rank seeded alike, yet different noise
    assert [r["first"] for r in first] == [r["first"] for r in again]  # reproducible from the run's seed
    assert [r["first"] for r in first] != [r["first"] for r in seeded]


def test_sharded_dtensor_output_is_refused_not_misscaled() -> None:
    """Tensor/sequence parallel plans that shard the embedding output would give each rank a local L or d."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from neftune import NEFTuneError, apply_neftune

    class ShardedOutput(torch.nn.Module):
        def __init__(self, placement: Any) -> None:
            super().__init__()
            self.placement = placement

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return distribute_tensor(x, init_device_mesh("cpu", (1,)), [self.placement])

    store = dist.HashStore()
    dist.init_process_group("gloo", rank=0, world_size=1, store=store)
    try:
        sharded = ShardedOutput(Shard(1))
        apply_neftune(sharded, 5.0, module=sharded)
        sharded.train()
        with pytest.raises(NEFTuneError, match=r"DTensor sharded as \(Shard\(dim=1\),\)"):
            sharded(torch.zeros(2, 8, 16))
        replicated = ShardedOutput(Replicate())
        apply_neftune(replicated, 5.0, module=replicated)
        replicated.train()
        assert replicated(torch.zeros(2, 8, 16)).full_tensor().abs().max() > 0
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(("cp", "sp", "refused"), [(2, 1, True), (1, 2, True), (1, 1, False)])
def test_context_and_sequence_parallelism_are_refused(cp: int, sp: int, refused: bool) -> None:
    from types import SimpleNamespace

    from neftune import NEFTuneConfig, NEFTuneError
    from neftune.integrations.callback import _refuse_split_sequences

    args = SimpleNamespace(parallelism_config=SimpleNamespace(cp_size=cp, sp_size=sp))
    if refused:
        with pytest.raises(NEFTuneError, match="splits every sequence across ranks"):
            _refuse_split_sequences(args, NEFTuneConfig())  # type: ignore[arg-type]
    else:
        _refuse_split_sequences(args, NEFTuneConfig())  # type: ignore[arg-type]
    _refuse_split_sequences(args, NEFTuneConfig(scaling="padded"))  # type: ignore[arg-type]
