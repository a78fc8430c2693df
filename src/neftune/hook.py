"""The forward hook that adds NEFTune noise to an embedding module's output."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from .errors import NEFTuneError
from .kernels import draw_seed, fused_noise_add, use_triton
from .layout import scalar_magnitude, token_magnitudes
from .model_families import embed_scale
from .noise import draw_unit_noise, noise_distribution
from .replay import MAX_REPLAYS, DrawPlan, Replay, default_generator, ids_key, in_backward
from .state import CountReason, NoiseState


def _as_batch(output: torch.Tensor, module_name: str) -> torch.Tensor | None:
    """View `output` as (batch, seq_len, hidden); None for 0-D/1-D probe outputs that must pass untouched."""
    if output.dim() == 3:
        return output
    if output.dim() == 2:  # (seq_len, hidden): one unbatched sequence, e.g. flattened VLM text
        return output.unsqueeze(0)
    if output.dim() < 2:
        return None
    raise NEFTuneError(
        f"NEFTune expects the output of '{module_name}' to be (batch, seq_len, hidden) or (seq_len, hidden), "
        f"got shape {tuple(output.shape)}; pass module= the layer that returns token embeddings."
    )


def _refuse_sharded(output: torch.Tensor, module_name: str) -> None:
    """A DTensor sharded over its sequence or hidden dimension holds only a slice: L or d would be local."""
    placements = getattr(output, "placements", None)
    if placements is not None and any(placement.is_shard() for placement in placements):
        raise NEFTuneError(
            f"NEFTune on '{module_name}': the embedding output is a DTensor sharded as {tuple(placements)} (tensor or "
            "sequence parallelism), so each rank would scale by its local slice's L or d. Use a parallel plan "
            "whose embedding output is replicated, or train without NEFTune under this plan."
        )


def _times_embed_scale(magnitude: torch.Tensor, scale: float | torch.Tensor | None) -> torch.Tensor:
    """`magnitude` (float32) times the module's embedding scale, if it has one."""
    if isinstance(scale, torch.Tensor):
        return magnitude * scale.to(device=magnitude.device, dtype=torch.float32)
    return magnitude if scale is None else magnitude * scale


class NoiseHook:
    """`register_forward_hook` callable: returns `output + noise` in training mode, else leaves output alone."""

    def __init__(self, state: NoiseState, module_name: str, scale_source: nn.Module | None = None) -> None:
        self.state = state
        self.module_name = module_name
        self.scale_source = scale_source
        self._placeholders: dict[torch.device, torch.Tensor] = {}

    def __deepcopy__(self, memo: dict[int, Any]) -> NoiseHook:
        # PEFT deep-copies a hooked embedding into `modules_to_save`; the copy must stay part of this
        # application (same config, same layout stack, removed by the same handle). The copy's own scale
        # lives in the copied module, found again through the memo when the module is copied with it.
        return NoiseHook(self.state, self.module_name, memo.get(id(self.scale_source), self.scale_source))

    def _text_positions(self, args: tuple[Any, ...], batched: torch.Tensor) -> torch.Tensor | None:
        """(batch, seq_len) 1.0 where the input token is text, 0.0 at multimodal placeholders; None if none apply."""
        ids = args[0] if args else None
        if not self.state.placeholder_ids or not isinstance(ids, torch.Tensor) or ids.is_floating_point():
            return None
        if ids.numel() != batched.shape[0] * batched.shape[1]:
            return None
        placeholders = self._placeholders.get(ids.device)
        if placeholders is None:
            placeholders = torch.tensor(self.state.placeholder_ids, device=ids.device)
            self._placeholders[ids.device] = placeholders
        return (~torch.isin(ids, placeholders)).to(torch.float32).view(batched.shape[0], batched.shape[1])

    def _pad_positions(self, args: tuple[Any, ...], batched: torch.Tensor) -> torch.Tensor | None:
        """(batch, seq_len) True where the input token is the pad token; None without a pad id or integer ids."""
        ids = args[0] if args else None
        pad_id = self.state.pad_token_id
        if pad_id is None or not isinstance(ids, torch.Tensor) or ids.is_floating_point():
            return None
        if ids.numel() != batched.shape[0] * batched.shape[1]:
            return None
        return (ids == pad_id).view(batched.shape[0], batched.shape[1])

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> torch.Tensor | None:
        state = self.state
        if not module.training:
            state.count("eval_mode")
            return None
        if in_backward():  # activation checkpointing recomputes this forward: add what the forward added
            device = output.device if isinstance(output, torch.Tensor) else torch.device("cpu")
            replay = state.replays.take(id(self), ids_key(args), lambda: default_generator(device).get_state())
            if replay is None and state.replays.evicted:
                self._warn_replay_evicted()
            return None if replay is None or replay.plan is None else self._replay(replay, output)
        silent: CountReason | None = None
        if not state.enabled:
            silent = "suspended"
        elif state.skip_no_grad and not torch.is_grad_enabled():
            silent = "no_grad"
        elif state.schedule.is_zero:
            silent = "scheduled_off"
        elif state.quiet_inside and state.stack.inside_any(state.quiet_inside):
            silent = "suspended"
        if silent is not None:
            state.count(silent)
            if silent != "no_grad" and isinstance(output, torch.Tensor) and not torch.compiler.is_compiling():
                # its recompute must add nothing, not the noise of an earlier forward of the same ids. Forwards
                # skipped for running without autograd (generation, reference models) leave none: they build no
                # graph to recompute, and their records would compete with the noised forward's of the same ids.
                torch_state = default_generator(output.device).get_state()
                state.replays.add(Replay(id(self), ids_key(args), torch_state, False, None, torch_state))
            return None
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            raise NEFTuneError(
                f"NEFTune hooked '{self.module_name}', whose output is "
                f"{type(output).__name__ if not isinstance(output, torch.Tensor) else output.dtype}, not a floating "
                "point tensor of embeddings; pass module= the layer that returns the token embeddings."
            )
        _refuse_sharded(output, self.module_name)
        batched = _as_batch(output, self.module_name)
        if batched is None:
            return None
        state.count("noised")
        if state.config.scaling == "padded":
            plan, real = self._padded_plan(output, batched), None
        else:
            plan, real = self._per_sequence_plan(output, batched, args)
        own = state.generators is not None
        generator = state.generator_for(output.device) if own else None
        if not torch.compiler.is_compiling():
            rng_state = (generator if generator is not None else default_generator(output.device)).get_state()
            torch_state = default_generator(output.device).get_state() if own else rng_state
            state.replays.add(Replay(id(self), ids_key(args), rng_state, own, plan, torch_state))
        return self._draw_and_add(plan, output, batched, generator, real, track=True)

    def _padded_plan(self, output: torch.Tensor, batched: torch.Tensor) -> DrawPlan:
        """transformers' `neftune_post_forward_hook`: L is the padded length, padding is noised."""
        state = self.state
        magnitude = scalar_magnitude(state.config.alpha, batched.size(1) * batched.size(2))
        kernel = state.config.kernel
        # "auto" keeps uniform padded noise on the torch path: bit-exact with transformers' hook is its promise.
        if use_triton(kernel, output) and not (kernel == "auto" and state.config.noise == "uniform"):
            full = torch.full((), magnitude, dtype=torch.float32, device=output.device)
            return DrawPlan(None, None, self._scaled(full), fused=True)
        scale = self._unit_scale(batched.device)
        if state.config.noise == "uniform":
            # Same draw, same magnitude arithmetic and same add as transformers' hook.
            return DrawPlan(uniform_bound=magnitude, pre_scale=None, scale=scale)
        return DrawPlan(uniform_bound=None, pre_scale=magnitude, scale=scale)

    def _per_sequence_plan(
        self, output: torch.Tensor, batched: torch.Tensor, args: tuple[Any, ...]
    ) -> tuple[DrawPlan, torch.Tensor | None]:
        """The paper's training code: each sequence's own L, zero on padding; returns the plan and the real mask."""
        state = self.state
        alpha = state.config.alpha
        batch, seq_len, hidden = batched.shape
        layout = state.stack.innermost()
        magnitudes = token_magnitudes(
            layout,
            alpha,
            batch,
            seq_len,
            hidden,
            output.device,
            self._text_positions(args, batched),
            self._pad_positions(args, batched),
        )
        if magnitudes is None and not layout.is_empty:
            self._warn_unmatched(layout, batched)
        fused = use_triton(state.config.kernel, output)
        if magnitudes is None:
            magnitude = scalar_magnitude(alpha, seq_len * hidden)
            scale = self._scaled(torch.full((), magnitude, dtype=torch.float32, device=output.device))
            return DrawPlan(None, None, scale, fused=fused), None
        shaped = self._scaled(magnitudes).view(*output.shape[:-1], 1)
        return DrawPlan(None, None, shaped, fused=fused), (magnitudes > 0).to(torch.float32)

    def _draw_and_add(
        self,
        plan: DrawPlan,
        output: torch.Tensor,
        batched: torch.Tensor,
        generator: torch.Generator | None,
        real: torch.Tensor | None,
        track: bool,
    ) -> torch.Tensor:
        # The noise buffer becomes the result: one allocation, the size of the output. (A fused addcmul would save
        # a pass but rounds differently on CPU, breaking bit-equality with the paper's code.)
        stats = self.state.stats if track else None
        if plan.fused:  # draw, scale and add in one Triton kernel (neftune.kernels): no noise tensor exists
            assert plan.scale is not None
            scale = plan.scale if plan.scale.dim() == 0 else plan.scale.view(*batched.shape[:2])
            if stats is not None:  # the noise's expected square, from the scale
                stats.add_expected(scale, noise_distribution(self.state.config.noise).unit_variance, batched, real)
            seed = draw_seed(output.device, generator)
            return fused_noise_add(batched, scale, self.state.config.noise, seed).view(output.shape)
        if plan.uniform_bound is not None:
            noise = torch.empty_like(output).uniform_(-plan.uniform_bound, plan.uniform_bound, generator=generator)
        else:
            noise = draw_unit_noise(output, self.state.config.noise, generator)
            if plan.pre_scale is not None:
                noise.mul_(plan.pre_scale)
        if stats is not None and plan.pre_scale is None and plan.uniform_bound is None:
            assert plan.scale is not None
            scale = plan.scale if plan.scale.dim() == 0 else plan.scale.view(*batched.shape[:2], 1)
            stats.add_unit(noise.view(batched.shape), scale, batched, real)
        if plan.scale is not None:
            noise.mul_(plan.scale.to(noise.dtype))
        if stats is not None and (plan.pre_scale is not None or plan.uniform_bound is not None):
            stats.add(noise, batched, None)
        return noise.add_(output)

    def _replay(self, replay: Replay, output: torch.Tensor) -> torch.Tensor:
        """The forward's noise again, from a copy of the generator state it drew from."""
        assert replay.plan is not None
        batched = _as_batch(output, self.module_name)
        assert batched is not None
        copy = torch.Generator(device=output.device)
        copy.set_state(replay.rng_state)
        result = self._draw_and_add(replay.plan, output, batched, copy, None, track=False)
        if not replay.own_generator:
            # torch's default generator advanced by this draw in the forward; later draws of the recomputed region
            # (dropout) must see it advanced the same way. When torch restored the forward's RNG state (the
            # checkpoint default) this draw is the forward's draw; otherwise advance it by an identical throwaway.
            default = default_generator(output.device)
            if torch.equal(default.get_state(), replay.rng_state):
                default.set_state(copy.get_state())
            else:
                self._draw_and_add(replay.plan, torch.zeros_like(output), batched, default, None, track=False)
        return result

    def _scaled(self, magnitude: torch.Tensor) -> torch.Tensor:
        """A float32 magnitude times the schedule's factor and the module's own embedding scale, if any."""
        schedule = self.state.schedule
        if schedule.varies:
            magnitude = magnitude * schedule.factor_tensor(magnitude.device)
        return _times_embed_scale(magnitude, embed_scale(self.scale_source))

    def _unit_scale(self, device: torch.device) -> torch.Tensor | None:
        """`_scaled` of a magnitude of 1, as a new float32 tensor (the same bits); None when it would be 1."""
        schedule, scale = self.state.schedule, embed_scale(self.scale_source)
        if schedule.varies:
            factor = schedule.factor_tensor(device)
            return factor.clone() if scale is None else _times_embed_scale(factor, scale)
        if isinstance(scale, torch.Tensor):
            return scale.to(device=device, dtype=torch.float32, copy=True)
        return None if scale is None else torch.full((), scale, dtype=torch.float32, device=device)

    def _warn_replay_evicted(self) -> None:
        if not self.state.warn_once("replay_evicted"):
            return
        warnings.warn(
            f"NEFTune on '{self.module_name}': an activation-checkpoint recompute found no record of its forward's "
            f"noise, because more than {MAX_REPLAYS} noised forwards ran before their backward; this recompute adds "
            "none, so its gradients differ from the forward's. Call handle.set_step(step) every optimizer step, or "
            "run backward before that many forwards pile up.",
            RuntimeWarning,
            stacklevel=2,
        )

    def _warn_unmatched(self, layout: Any, batched: torch.Tensor) -> None:
        if not self.state.warn_once("unmatched_layout"):
            return
        shapes = {name: tuple(value.shape) for name, value in vars(layout).items() if isinstance(value, torch.Tensor)}
        warnings.warn(
            f"NEFTune on '{self.module_name}': the model was given {shapes}, which do not match the embedding "
            f"output {tuple(batched.shape)}; every row is treated as one full-length sequence (L = "
            f"{batched.shape[1]}). Pass a 2-D attention_mask or position_ids of shape (batch, seq_len).",
            stacklevel=2,
        )
