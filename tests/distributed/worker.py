"""One rank of a 2-process CPU (gloo) run; launched by tests/test_distributed.py through torchrun.

Usage: torchrun --nproc_per_node 2 tests/distributed/worker.py MODE OUT_DIR
Each rank writes OUT_DIR/<MODE>-rank<r>.json with what it measured.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from neftune import NEFTuneCallback, NEFTuneConfig, apply_neftune, disable_noise, is_neftune_active
from neftune.installed_hooks import noise_hooks
from neftune.toy import (
    cpu_training_kwargs,
    language_modeling_dataset,
    tiny_llama,
    tiny_llama_for,
    tiny_tokenizer,
)

ALPHA = 5.0


def hook_count(model: torch.nn.Module) -> int:
    return sum(1 for module in model.modules() for _ in noise_hooks(module))


def trainer_ddp() -> dict[str, Any]:
    """DDP through transformers' Trainer (use_cpu=True under torchrun), with the callback."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    seen: list[int] = []

    class Probe(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            seen.append(hook_count(model))

    tokenizer = tiny_tokenizer()
    callback = NEFTuneCallback(ALPHA)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = Trainer(
            model=tiny_llama_for(tokenizer),
            args=TrainingArguments(**cpu_training_kwargs(output_dir, max_steps=4, per_device_train_batch_size=2)),
            train_dataset=language_modeling_dataset(tokenizer, rows=32),
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
            callbacks=[callback, Probe()],
        )
        trainer.train()
    logs = [entry for entry in trainer.state.log_history if "neftune/noised_calls" in entry]
    result = {
        "world_size": trainer.args.world_size,
        "wrapped": type(trainer.model_wrapped).__name__,
        "hooks_per_step": seen,
        "active_after": is_neftune_active(trainer.model),
        "noised_calls": [entry["neftune/noised_calls"] for entry in logs],
        "noise_rms": [entry["neftune/noise_rms"] for entry in logs],
    }
    del trainer
    return result


def accelerate_loop() -> dict[str, Any]:
    """A raw accelerate loop: apply_neftune receives the DDP-wrapped model."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    tokenizer = tiny_tokenizer()
    model = tiny_llama_for(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = tokenizer(["What do bees make? Bees make honey.", "Say hello. Hello!"], padding=True, return_tensors="pt")
    model, optimizer = accelerator.prepare(model, optimizer)
    handle = apply_neftune(model, ALPHA)
    model.train()
    for _ in range(3):
        loss = model(**batch, labels=batch["input_ids"]).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    result = {
        "wrapped": type(model).__name__,
        "hooked": list(handle.module_names),
        "noised": handle.counts.noised,
        "removed": handle.remove(),
        "active_after": is_neftune_active(model),
    }
    del model, optimizer
    return result


def fsdp2() -> dict[str, Any]:
    """FSDP2 (fully_shard) on a tiny Llama: the hook sees the full-hidden embedding output."""
    from torch.distributed.fsdp import fully_shard

    model = tiny_llama(128, 32)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    placements = str(getattr(model.model.embed_tokens.weight, "placements", None))  # before the root unshards
    handle = apply_neftune(model, ALPHA)
    model.train()
    rank = dist.get_rank()
    generator = torch.Generator().manual_seed(100 + rank)
    lengths = [16, 7] if rank == 0 else [11, 4]
    ids = torch.randint(0, 128, (2, 16), generator=generator)
    mask = torch.zeros(2, 16, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    outputs: list[torch.Tensor] = []
    spy = model.model.embed_tokens.register_forward_hook(lambda m, a, out: outputs.append(out.detach().clone()))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
        with disable_noise(model):
            model(input_ids=ids, attention_mask=mask)
    spy.remove()
    noise = (outputs[0] - outputs[1]).double()
    ratios = [
        float(noise[row][mask[row] == 1].abs().max()) / (ALPHA / (length * 32) ** 0.5)
        for row, length in enumerate(lengths)
    ]
    result = {
        "hidden": outputs[0].shape[-1],
        "weight_placements": placements,
        "max_over_bound": ratios,
        "pads_untouched": bool((noise[mask == 0] == 0).all()),
        "removed": handle.remove(),
    }
    del model
    return result


def independence(seed: str) -> dict[str, Any]:
    """Every rank seeded alike (as the Trainer does): by default each draws different noise, reproducibly."""
    torch.manual_seed(1234)
    model = tiny_llama(128, 32)
    torch.nn.init.zeros_(model.model.embed_tokens.weight)  # embedding output == noise
    config = NEFTuneConfig(alpha=ALPHA, seed=None if seed == "none" else int(seed))
    handle = apply_neftune(model.model.embed_tokens, config, module=model.model.embed_tokens)
    model.train()
    torch.manual_seed(1234)  # same global RNG state on every rank
    with torch.no_grad():
        noise = model.model.embed_tokens(torch.zeros(1, 8, dtype=torch.long))
    gathered = [torch.empty_like(noise) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, noise)
    handle.remove()
    return {
        "ranks_differ": not torch.equal(gathered[0], gathered[1]),
        "checksum": float(noise.double().abs().sum()),
        "first": noise.flatten()[:4].tolist(),
    }


def main() -> None:
    mode, out_dir = sys.argv[1], Path(sys.argv[2])
    if not dist.is_initialized() and mode != "trainer":
        dist.init_process_group("gloo")
    runners = {
        "trainer": trainer_ddp,
        "accelerate": accelerate_loop,
        "fsdp2": fsdp2,
        "independence": lambda: independence(sys.argv[3]),
    }
    result = runners[mode]()
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    (out_dir / f"{mode}-rank{rank}.json").write_text(json.dumps(result))
    # gloo can hang at exit while tensors of the process group are alive: free them first.
    gc.collect()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
