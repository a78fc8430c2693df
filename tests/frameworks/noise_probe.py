"""Measure, from inside a real framework's training run, the noise added to every packed segment.

Run as a wrapper around the framework's entry point, in the same process:

    python tests/frameworks/noise_probe.py --alpha 5 --report r.json -- -m axolotl.cli.train cfg.yml

A global forward hook (`register_module_forward_hook`, which torch runs before the module's own hooks) sees the
embedding's clean output, the first decoder layer's input (the embeddings after every hook: clean + noise) and
the decoder model's kwargs (`position_ids`, `cu_seq_lens_q`, `attention_mask`). Segments are derived here
independently of `neftune.layout`. For every training forward and every segment it records
`max|noise| / (alpha / sqrt(L * d))`, the largest noise on padding, and whether transformers' own hook was on
the embedding. `check_report` turns the report into pass/fail; the framework drivers call it.
"""

from __future__ import annotations

import argparse
import json
import math
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

DECODERS = ("LlamaModel",)
LAYERS = ("LlamaDecoderLayer",)
RATIO_RANGE = (0.97, 1.0 + 1e-3)  # a uniform draw over L * d >= 1000 elements reaches > 0.97 of its bound


def _hook_names(module: nn.Module) -> list[str]:
    return [
        type(hook).__name__ if not hasattr(hook, "__name__") else hook.__name__
        for hook in module._forward_hooks.values()
    ]


def segments_of(
    layout: dict[str, Any], input_ids: torch.Tensor, pad_token_id: int | None
) -> tuple[list[tuple[int, int, int]], torch.Tensor]:
    """([(row, start, end)], pad mask (batch, seq)) of one forward; a segment is a half-open token range of a row."""
    batch, seq = input_ids.shape
    pad = torch.zeros(batch, seq, dtype=torch.bool)
    mask = layout.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and tuple(mask.shape) == (batch, seq):
        pad |= mask.cpu() == 0
    else:
        mask = None
    cu = layout.get("cu_seq_lens_q")
    positions = layout.get("position_ids")
    starts = torch.zeros(batch, seq, dtype=torch.bool)
    starts[:, 0] = True
    if isinstance(cu, torch.Tensor):
        flat = starts.view(-1)
        bounds = [int(b) for b in cu.cpu().tolist()]
        for b in bounds[:-1]:
            if b < flat.numel():
                flat[b] = True
        pad.view(-1)[bounds[-1] :] = True
    elif isinstance(positions, torch.Tensor) and positions.dim() == 2 and positions.shape[-1] == seq:
        starts |= (positions.cpu() == 0).expand(batch, seq)
    if mask is not None and int(mask.max()) > 1:  # segment-id masks (axolotl's multipack): a new id starts one
        ids = mask.cpu()
        starts[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    segments = []
    for row in range(batch):
        begins = [int(i) for i in starts[row].nonzero().flatten().tolist()]
        for start, end in zip(begins, [*begins[1:], seq], strict=True):
            segments.append((row, start, end))
    if pad_token_id is not None:  # a segment of only pad ids is padding (LLaMA-Factory's, axolotl's packing)
        for row, start, end in segments:
            if bool((input_ids[row, start:end] == pad_token_id).all()):
                pad[row, start:end] = True
    return segments, pad


class NoiseProbe:
    def __init__(self, alpha: float, pad_token_id: int | None) -> None:
        self.alpha = alpha
        self.pad_token_id = pad_token_id
        self.forwards: list[dict[str, Any]] = []
        self._clean: torch.Tensor | None = None
        self._ids: torch.Tensor | None = None
        self._noised: torch.Tensor | None = None
        self._hooks: dict[str, Any] = {}

    def install(self) -> None:
        torch.nn.modules.module.register_module_forward_hook(self._on_forward, with_kwargs=True)

    def _on_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        name = type(module).__name__
        if isinstance(module, nn.Embedding) and isinstance(output, torch.Tensor) and output.is_floating_point():
            self._clean = output.detach().clone()
            self._ids = (args[0] if args else kwargs["input"]).detach().cpu()
            self._noised = None
            names = _hook_names(module)
            self._hooks = {
                "training": module.training,
                "grad": torch.is_grad_enabled(),
                "neftune_hooks": names.count("NoiseHook"),
                "transformers_hooks": names.count("neftune_post_forward_hook"),
                "transformers_attribute": hasattr(module, "neftune_noise_alpha"),
            }
        elif name in LAYERS and self._clean is not None and self._noised is None:
            hidden = args[0] if args else kwargs["hidden_states"]
            self._noised = hidden.detach().clone()
        elif name in DECODERS and self._clean is not None and self._noised is not None:
            self.forwards.append(self._measure(kwargs))
            if len(self.forwards) == 1:  # one sample of what the framework passed, for the log
                positions = kwargs.get("position_ids")
                self.forwards[0]["first_row"] = {
                    "input_ids": self._ids[0].tolist(),
                    "position_ids": positions[0].tolist() if isinstance(positions, torch.Tensor) else None,
                }
            self._clean = self._noised = self._ids = None

    def _measure(self, layout: dict[str, Any]) -> dict[str, Any]:
        assert self._clean is not None and self._noised is not None and self._ids is not None
        noise = (self._noised.float() - self._clean.float()).cpu()
        ids = self._ids.view(noise.shape[0], noise.shape[1])
        hidden = noise.shape[-1]
        segments, pad = segments_of(layout, ids, self.pad_token_id)
        rows = []
        for row, start, end in segments:
            real = ~pad[row, start:end]
            length = int(real.sum())
            if length == 0:
                continue
            bound = self.alpha / math.sqrt(length * hidden)
            measured = float(noise[row, start:end][real].abs().max())
            rows.append({"row": row, "start": start, "L": length, "bound": bound, "max": measured})
        pad_max = float(noise[pad].abs().max()) if bool(pad.any()) else 0.0
        return {
            **self._hooks,
            "shape": list(noise.shape),
            "layout": sorted(
                k for k in ("cu_seq_lens_q", "position_ids", "attention_mask") if layout.get(k) is not None
            ),
            "noise_max": float(noise.abs().max()),
            "pads": int(pad.sum()),
            "pad_max": pad_max,
            "segments": rows,
        }


def check_report(report: dict[str, Any], *, expect_packed: bool, label: str) -> list[str]:
    """Print the numbers of one run and return its violations (empty: passed)."""
    low, high = RATIO_RANGE
    training = [f for f in report["forwards"] if f["training"] and f["grad"]]
    clean = [f for f in report["forwards"] if not (f["training"] and f["grad"])]
    problems = []
    if not training:
        problems.append("no training forward was recorded")
    segments = [s for f in training for s in f["segments"]]
    ratios = [s["max"] / s["bound"] for s in segments]
    packed_rows = sum(
        1
        for f in training
        for row in {s["row"] for s in f["segments"]}
        if sum(s["row"] == row for s in f["segments"]) > 1
    )
    lengths = sorted({s["L"] for s in segments})
    print(
        f"[{label}] training forwards {len(training)}, segments {len(segments)}, "
        f"rows holding > 1 segment {packed_rows}"
    )
    print(f"[{label}] layout inputs seen: {sorted({k for f in training for k in f['layout']})}; segment L: {lengths}")
    if ratios:
        print(f"[{label}] max|noise| / (alpha/sqrt(L*d)) over segments: min {min(ratios):.4f}, max {max(ratios):.4f}")
    for s in segments[:4]:
        print(f"[{label}]   row {s['row']} at {s['start']}: L={s['L']} bound {s['bound']:.5f} measured {s['max']:.5f}")
    first = training[0].get("first_row") if training else None
    if first and first["position_ids"] is not None:
        starts = [i for i, p in enumerate(first["position_ids"]) if p == 0]
        print(f"[{label}] first row: {len(first['position_ids'])} tokens, position id 0 at {starts}")
    pads = sum(f["pads"] for f in training)
    pad_max = max((f["pad_max"] for f in training), default=0.0)
    print(f"[{label}] pad tokens {pads}, largest |noise| on a pad {pad_max!r}")
    bad = [(s, r) for s, r in zip(segments, ratios, strict=True) if not low <= r <= high]
    if bad:
        problems.append(f"{len(bad)} segments outside [{low}, {high}], e.g. {bad[0]}")
    if pad_max != 0.0:
        problems.append(f"padding got noise {pad_max}")
    if expect_packed and packed_rows == 0:
        problems.append("no row held more than one segment: the run was not packed")
    theirs = [f for f in report["forwards"] if f["transformers_hooks"] or f["transformers_attribute"]]
    if theirs:
        problems.append(f"transformers' own NEFTune hook was on the embedding in {len(theirs)} forwards")
    if any(f["neftune_hooks"] != 1 for f in training):
        problems.append(f"neftune hooks per training forward: {sorted({f['neftune_hooks'] for f in training})}")
    noisy_clean = [f["noise_max"] for f in clean if f["noise_max"] != 0.0]
    print(f"[{label}] eval / no-grad forwards {len(clean)}, with noise {len(noisy_clean)}")
    if noisy_clean:
        problems.append(f"{len(noisy_clean)} eval or no-grad forwards got noise")
    for problem in problems:
        print(f"[{label}] FAIL: {problem}")
    if not problems:
        print(f"[{label}] OK")
    return problems


def main(argv: Sequence[str]) -> int:
    index = list(argv).index("--")
    parser = argparse.ArgumentParser(prog="noise_probe.py")
    parser.add_argument("--alpha", type=float, required=True)
    parser.add_argument("--pad-token-id", type=int, default=None)
    parser.add_argument("--report", type=Path, required=True)
    options = parser.parse_args(argv[:index])
    target = list(argv[index + 1 :])
    probe = NoiseProbe(options.alpha, options.pad_token_id)
    probe.install()
    code: Any = 0
    try:
        if target[0] == "-m":
            sys.argv = target[1:]
            runpy.run_module(target[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = target
            runpy.run_path(target[0], run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code
    finally:
        options.report.write_text(json.dumps({"target": target, "exit": code, "forwards": probe.forwards}))
    return code if isinstance(code, int) else (0 if code is None else 1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
