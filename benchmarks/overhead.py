"""Is the lunch free? Training-step and hook-alone overhead of NEFTune, side by side with transformers' hook.

    python benchmarks/overhead.py                 # CPU sweep (tiny, ~40M and ~350M Llama, fp32), ~10 min on 2 cores
    python benchmarks/overhead.py --device cuda   # GPU (`make gpu-bench`): a 1.1B Llama in bf16, a few minutes
    python benchmarks/overhead.py --quick         # a smoke run (add --device cuda on a GPU)

Providers, interleaved in one process so machine drift cancels: `none` (no noise), `neftune_per_sequence` and
`neftune_padded` (the torch path, `kernel="torch"`), on CUDA `neftune_triton` (per_sequence with the fused Triton
kernel), and `transformers` (`neftune_post_forward_hook`). Every (condition, provider) gets warm-up steps, then
`--repeats` timed steps (CUDA: timed with events, synchronised); p20/p50/p80 are reported. Results are appended
to benchmarks/results/overhead.csv (machine or GPU name, date, versions, conditions), plotted to
benchmarks/results/overhead[_cuda].png, and the README table between the `overhead-table` (CPU) or
`overhead-gpu-table` (CUDA) markers is regenerated from the newest run.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from neftune import NEFTuneConfig, apply_neftune

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PROVIDERS = ["none", "neftune_per_sequence", "neftune_padded", "transformers"]
CUDA_PROVIDERS = ["none", "neftune_per_sequence", "neftune_padded", "neftune_triton", "transformers"]
LABELS = {
    "none": "no noise",
    "neftune_per_sequence": "neftune per_sequence (torch)",
    "neftune_padded": "neftune padded (torch)",
    "neftune_triton": "neftune per_sequence (triton)",
    "transformers": "transformers' hook",
}
ALPHA = 5.0


def providers_for(device: str) -> list[str]:
    return CUDA_PROVIDERS if device == "cuda" else PROVIDERS


@contextlib.contextmanager
def provider(name: str, model: nn.Module, embedding: nn.Module) -> Iterator[None]:
    """Attach one provider's noise for the duration of the block."""
    if name == "none":
        yield
        return
    if name == "transformers":
        from transformers.integrations.neftune import neftune_post_forward_hook

        embedding.neftune_noise_alpha = ALPHA
        handle = embedding.register_forward_hook(neftune_post_forward_hook)
        try:
            yield
        finally:
            handle.remove()
            del embedding.neftune_noise_alpha
        return
    scaling = "padded" if name == "neftune_padded" else "per_sequence"
    kernel = "triton" if name == "neftune_triton" else "torch"  # explicit: "auto" would pick triton on CUDA
    with apply_neftune(model, NEFTuneConfig(alpha=ALPHA, scaling=scaling, kernel=kernel), module=embedding):
        yield


def quantiles(samples: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(samples, n=10, method="inclusive")
    return cuts[1], statistics.median(samples), cuts[7]


def seconds(fn: Callable[[], object], device: str, inner: int = 1) -> float:
    """Wall time of `fn` (mean of `inner` calls). CUDA: between events, with the queue drained before and after."""
    if device != "cuda":
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - start) / inner
    torch.cuda.synchronize()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(inner):
        fn()
    end.record()
    torch.cuda.synchronize()
    return begin.elapsed_time(end) / 1e3 / inner


def interleaved(
    step: Callable[[], None],
    model: nn.Module,
    embedding: nn.Module,
    warmup: int,
    repeats: int,
    device: str = "cpu",
    inner: int = 1,
) -> dict[str, list[float]]:
    names = providers_for(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    order = list(names)
    for round_index in range(warmup + repeats):
        random.Random(round_index).shuffle(order)
        for name in order:
            with provider(name, model, embedding):
                elapsed = seconds(step, device, inner)
            if round_index >= warmup:
                times[name].append(elapsed)
    return times


# name -> (hidden, layers, intermediate, heads, kv heads); vocab 32000 for all
SIZES = {
    "tiny": (64, 2, 128, 4, 2),
    "40M": (384, 6, 1024, 6, 2),
    "350M": (1024, 24, 2816, 16, 4),
    "1.1B": (2048, 16, 8192, 32, 8),  # Llama-3.2-1B's shape (its vocab is 128256): 1.1B parameters here
}


def llama(size: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig

    hidden, layers, intermediate, heads, kv_heads = SIZES[size]
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    with torch.device(device):  # built in place: a 1.1B model is slow to initialise on the CPU
        model = AutoModelForCausalLM.from_config(config)
    model.to(dtype).train()
    return model


def batch(kind: str, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    """`padded`: rows of lengths spread over [seq_len/2, seq_len] with an attention mask. `packed`: the same
    sequences in one padding-free row with restarting position ids (TRL's padding_free layout)."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.linspace(seq_len // 2, seq_len, batch_size).long().tolist()
    if kind == "padded":
        input_ids = torch.randint(0, 32000, (batch_size, seq_len), generator=generator)
        mask = torch.zeros(batch_size, seq_len, dtype=torch.long)
        for row, length in enumerate(lengths):
            mask[row, :length] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": input_ids.masked_fill(mask == 0, -100)}
    total = sum(lengths)
    input_ids = torch.randint(0, 32000, (1, total), generator=generator)
    position_ids = torch.cat([torch.arange(length) for length in lengths])[None]
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": input_ids.clone()}


@dataclass
class Row:
    benchmark: str
    model: str
    layout: str
    batch: int
    seq_len: int
    provider: str
    p20_ms: float
    p50_ms: float
    p80_ms: float
    ratio_to_none: float
    extra_bytes: int = -1
    bytes_per_s: float = float("nan")


def full_steps(
    size: str,
    layout: str,
    batch_size: int,
    seq_len: int,
    warmup: int,
    repeats: int,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[Row]:
    model = llama(size, device, dtype)
    embedding = model.get_input_embeddings()
    inputs = {key: value.to(device) for key, value in batch(layout, batch_size, seq_len).items()}

    def step() -> None:
        model(**inputs).loss.backward()
        model.zero_grad(set_to_none=True)

    times = interleaved(step, model, embedding, warmup, repeats, device)
    base = quantiles(times["none"])[1]
    return [
        Row(
            "train_step",
            size,
            layout,
            batch_size,
            seq_len,
            name,
            *(1e3 * q for q in quantiles(times[name])),
            quantiles(times[name])[1] / base,
        )
        for name in times
    ]


def allocated_bytes(fn: Callable[[], object], device: str = "cpu") -> int:
    """Bytes `fn` allocates: CPU, the profiler's memory events; CUDA, the allocator's peak above the start."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - before)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return int(sum(max(event.self_cpu_memory_usage, 0) for event in prof.key_averages()))


def hook_alone(
    batch_size: int,
    seq_len: int,
    hidden: int,
    warmup: int,
    repeats: int,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[Row]:
    """The embedding forward with each provider, against the memory-bound floor of one out-of-place add."""
    embedding = nn.Embedding(32000, hidden, device=device, dtype=dtype)
    embedding.train()
    ids = torch.randint(0, 32000, (batch_size, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    holder = nn.Module()
    holder.embed = embedding
    inner = 10 if device == "cuda" else 1  # a GPU forward takes well under a millisecond: average a few

    def forward() -> None:
        with torch.no_grad():
            embedding(ids)

    times = interleaved(forward, holder, embedding, warmup, repeats, device, inner)
    with torch.no_grad():
        output = embedding(ids)
        other = torch.empty_like(output).uniform_()
    floor = [seconds(lambda: output + other, device, inner) for _ in range(warmup + repeats)][warmup:]
    lookup = quantiles(times["none"])[1]
    nbytes = output.numel() * output.element_size()
    lookup_bytes = allocated_bytes(forward, device)  # the lookup's own output

    def row(provider_name: str, seconds: tuple[float, float, float], extra: int, bytes_per_s: float) -> Row:
        p20, p50, p80 = (1e3 * value for value in seconds)
        model = f"embedding d={hidden} {str(dtype).removeprefix('torch.')}"
        return Row(
            "hook_alone",
            model,
            "dense",
            batch_size,
            seq_len,
            provider_name,
            p20,
            p50,
            p80,
            float("nan"),
            extra,
            bytes_per_s,
        )

    rows = []
    for name in times:
        p20, p50, p80 = (q - lookup for q in quantiles(times[name]))
        with provider(name, holder, embedding):
            extra = allocated_bytes(forward, device) - lookup_bytes
        rows.append(row(name, (p20, p50, p80), extra, 2 * nbytes / p50 if name != "none" else float("nan")))
    f20, f50, f80 = quantiles(floor)
    rows.append(row("plain_add_floor", (f20, f50, f80), nbytes, 3 * nbytes / f50))
    return rows


def environment(device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, str]:
    import transformers

    import neftune

    versions = f"neftune {neftune.__version__}, torch {torch.__version__}, transformers {transformers.__version__}"
    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    if device == "cuda":
        import triton

        machine = torch.cuda.get_device_name(0)
        versions += f", triton {triton.__version__}, CUDA {torch.version.cuda}"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "device": f"{device} {str(dtype).removeprefix('torch.')}" if device == "cuda" else device,
        "versions": versions,
    }


def write_csv(rows: list[Row], env: dict[str, str]) -> None:
    path = RESULTS / "overhead.csv"
    fields = list(env) + list(Row.__dataclass_fields__)
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({**env, **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(row).items()}})


def plot(rows: list[Row], env: dict[str, str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row for row in rows if row.benchmark == "train_step"]
    labels = sorted({f"{r.model} {r.layout}\n{r.batch}x{r.seq_len}" for r in steps}, key=lambda s: s)
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    noised = [name for name in dict.fromkeys(r.provider for r in steps) if name != "none"]
    width = 0.8 / len(noised)
    for index, name in enumerate(noised):
        values = [
            next(
                r.ratio_to_none
                for r in steps
                if f"{r.model} {r.layout}\n{r.batch}x{r.seq_len}" == label and r.provider == name
            )
            for label in labels
        ]
        left.bar([i + index * width for i in range(len(labels))], values, width, label=name)
    left.axhline(1.0, color="black", linewidth=0.8)
    left.axhline(1.01, color="grey", linestyle="--", linewidth=0.8)
    left.set_xticks([i + width * (len(noised) - 1) / 2 for i in range(len(labels))], labels, fontsize=7)
    left.set_ylabel("training step time / no noise (p50)")
    left.set_ylim(0.9, max(1.1, max(r.ratio_to_none for r in steps) + 0.02))
    left.legend(fontsize=8)
    left.set_title("forward + backward, Llama configs")
    alone = [row for row in rows if row.benchmark == "hook_alone"]
    right.bar(
        [r.provider for r in alone],
        [r.p50_ms for r in alone],
        yerr=[[r.p50_ms - r.p20_ms for r in alone], [r.p80_ms - r.p50_ms for r in alone]],
    )
    right.set_ylabel("ms (p50, p20-p80 bars)")
    right.set_title(f"hook alone, {alone[0].batch}x{alone[0].seq_len}x{alone[0].model.split('=')[1]} output")
    right.tick_params(axis="x", labelsize=7, rotation=15)
    figure.suptitle(f"NEFTune overhead on {env['machine']} ({env['date']}; {env['versions']})", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def markdown(rows: list[Row], env: dict[str, str]) -> str:
    names = list(dict.fromkeys(r.provider for r in rows if r.benchmark == "train_step"))
    command = "python benchmarks/overhead.py" + (" --device cuda" if env["device"].startswith("cuda") else "")
    lines = [
        f"Measured {env['date']} on {env['machine']} ({env['device']}; {env['versions']}); `{command}`.",
        "Training step: forward + backward of a Llama config (vocab 32000), p50 over interleaved repeats; ratio =",
        "p50 / p50 without noise. Hook alone: the embedding forward's extra time over the plain lookup, and the",
        "floor of one out-of-place add of the same tensor.",
        "",
        "| benchmark | model | layout | batch x seq | " + " | ".join(LABELS[name] for name in names) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    keys = sorted(
        {(r.benchmark, r.model, r.layout, r.batch, r.seq_len) for r in rows if r.benchmark == "train_step"},
        key=lambda k: (list(SIZES).index(k[1]), k[2], k[3] * k[4]),
    )
    for key in keys:
        cells = {r.provider: r for r in rows if (r.benchmark, r.model, r.layout, r.batch, r.seq_len) == key}
        lines.append(
            f"| train step | {key[1]} | {key[2]} | {key[3]} x {key[4]} | {cells['none'].p50_ms:.1f} ms "
            + " ".join(f"| {cells[name].p50_ms:.1f} ms (x{cells[name].ratio_to_none:.3f})" for name in names[1:])
            + " |"
        )
    alone = {r.provider: r for r in rows if r.benchmark == "hook_alone"}
    if alone:
        any_row = next(iter(alone.values()))
        mib = lambda b: f"{b / 2**20:.0f} MiB"  # noqa: E731
        lines.append(
            f"| hook alone | {any_row.model} | dense | {any_row.batch} x {any_row.seq_len} | floor (add) "
            f"{alone['plain_add_floor'].p50_ms:.2f} ms "
            + " ".join(f"| +{alone[name].p50_ms:.2f} ms, {mib(alone[name].extra_bytes)}" for name in names[1:])
            + " |"
        )
    if env["device"].startswith("cuda"):
        lines += ["", *goals(rows)]
    return "\n".join(lines)


def goals(rows: list[Row]) -> list[str]:
    """The issue's targets, read off this run: step within 0.5% of no noise; with the kernel, the hook alone
    within 1.5x the plain add and at least 2x faster than transformers' hook."""
    steps = [r for r in rows if r.benchmark == "train_step" and r.provider != "none"]
    alone = {r.provider: r for r in rows if r.benchmark == "hook_alone"}
    lines = [
        "Goals: "
        + "; ".join(
            f"{name} step x{max(r.ratio_to_none for r in steps if r.provider == name):.4f} (worst layout)"
            for name in dict.fromkeys(r.provider for r in steps)
        )
        + " (goal <= x1.005)."
    ]
    if "neftune_triton" in alone:
        kernel = alone["neftune_triton"].p50_ms
        lines.append(
            f"Hook alone with the kernel: {kernel / alone['plain_add_floor'].p50_ms:.2f}x the plain add (goal <= "
            f"1.5x), {alone['transformers'].p50_ms / kernel:.2f}x faster than transformers' hook (goal >= 2x)."
        )
    return lines


def update_readme(table: str, marker: str = "overhead-table") -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        readme.write_text(f"{head}{start}\n{table}\n{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model and few repeats (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cuda: a 1.1B Llama in bf16 (8 x 2048, padded and packed), the hook alone at 8 x 4096 x 4096 bf16, "
        "and neftune's Triton kernel as a fifth provider (needs triton)",
    )
    args = parser.parse_args()
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    cuda = device == "cuda"
    warmup = 1 if args.quick else (3 if cuda else 2)
    repeats = args.repeats or (3 if args.quick else (20 if cuda else 10))
    dtype = torch.bfloat16 if cuda else torch.float32
    plan = [("tiny", "padded", 8, 256), ("tiny", "packed", 8, 256)]
    if cuda and not args.quick:
        plan = [("1.1B", "padded", 8, 2048), ("1.1B", "packed", 8, 2048)]
    elif not args.quick:
        plan += [
            ("40M", "padded", 4, 256),
            ("40M", "packed", 4, 256),
            ("350M", "padded", 2, 256),
            ("350M", "packed", 2, 256),
        ]
    alone_shape = (8, 4096, 4096) if cuda else (8, 1024, 2048)
    if args.quick:
        alone_shape = (8, 128, 256)
    env = environment(device, dtype)
    rows: list[Row] = []
    for size, layout, batch_size, seq_len in plan:
        rows += full_steps(size, layout, batch_size, seq_len, warmup, repeats, device, dtype)
        print(
            f"{size} {layout} {batch_size}x{seq_len}: "
            + ", ".join(f"{r.provider} x{r.ratio_to_none:.4f}" for r in rows[-len(providers_for(device)) :]),
            flush=True,
        )
        if cuda:
            torch.cuda.empty_cache()
    rows += hook_alone(*alone_shape, warmup, repeats, device, dtype)
    for row in rows[-len(providers_for(device)) - 1 :]:
        print(f"hook alone {row.provider}: {row.p50_ms:.3f} ms, {row.extra_bytes / 2**20:.0f} MiB allocated")
    if args.quick:  # a smoke run: nothing is recorded
        print(markdown(rows, env))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_csv(rows, env)
    suffix = "_cuda" if cuda else ""
    plot(rows, env, RESULTS / f"overhead{suffix}.png")
    table = markdown(rows, env)
    (RESULTS / f"overhead{suffix}.md").write_text(table + "\n")
    update_readme(table, "overhead-gpu-table" if cuda else "overhead-table")
    print(table)


if __name__ == "__main__":
    main()
