"""`apply_neftune`, its handle, and the model-wide helpers `remove_neftune`, `is_neftune_active`, `disable_noise`."""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator
from types import TracebackType

import torch
from torch import nn

from .call_context import LayoutRecorder
from .config import NEFTuneConfig, as_config
from .discovery import FilterFn, ancestors, paths_to, select_targets, unwrap_model
from .errors import NEFTuneError
from .hook import NoiseHook
from .installed_hooks import noise_hooks, noise_states, remove_hooks
from .model_families import embed_scale_factor as embed_scale_factor  # re-exported: it was defined here first
from .model_families import embedding_scale_source, pad_token_id, placeholder_token_ids
from .state import CallCounts, NoiseState
from .stats import NoiseStats
from .target_watch import TargetWatch

logger = logging.getLogger("neftune")

_TRANSFORMERS_HOOK_NAME = "neftune_post_forward_hook"
_warned_alpha_zero = False


def check_step(step: object) -> int:
    """`step` if it is an optimizer step (an int >= 0), else `NEFTuneError`."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise NEFTuneError(f"step must be a non-negative int, got {step!r}; pass the optimizer step (0, 1, ...).")
    return step


class NEFTuneHandle:
    """What `apply_neftune` returns: the hooked modules, the config, and the way to undo it.

    Use it as a context manager to remove the noise even if training raises:

    ```python
    with apply_neftune(model, 5.0):
        trainer.train()
    ```
    """

    def __init__(
        self, model: nn.Module, config: NEFTuneConfig, targets: list[tuple[str, nn.Module]], state: NoiseState
    ) -> None:
        self._model = model
        self._config = config
        self._modules = tuple(module for _, module in targets)
        self._names = tuple(name for name, _ in targets)
        self._state = state
        self._removed = not targets
        self._read_noised = self._read_total = 0

    @property
    def config(self) -> NEFTuneConfig:
        """The `NEFTuneConfig` in force."""
        return self._config

    @property
    def modules(self) -> tuple[nn.Module, ...]:
        """The modules whose output is noised (empty when alpha is 0)."""
        return self._modules

    @property
    def module_names(self) -> tuple[str, ...]:
        """Qualified names of the noised modules inside the model."""
        return self._names

    @property
    def counts(self) -> CallCounts:
        """Running counts of hooked forwards: `noised`, `eval_mode`, `suspended`, `no_grad`, `total`."""
        return self._state.counts

    def read_stats(self) -> NoiseStats:
        """Noise statistics since the last read (one host sync), then reset.

        Noise and embedding RMS are measured only with `track_stats=True`; the call counts always are.
        """
        counts = self._state.counts  # one small host read: this is where the sync belongs
        noised, total = counts.noised - self._read_noised, counts.total - self._read_total
        self._read_noised, self._read_total = counts.noised, counts.total
        if self._state.stats is None:
            return NoiseStats(self._state.alpha, math.nan, math.nan, math.nan, noised, total)
        return self._state.stats.read(self._state.alpha, noised, total)

    @property
    def tracks_stats(self) -> bool:
        """Whether `read_stats()` measures the noise and embedding RMS (`apply_neftune(..., track_stats=True)`)."""
        return self._state.stats is not None

    @property
    def alpha(self) -> float:
        """The alpha in force now: `config.alpha` times the schedule's factor at the current progress."""
        return self._state.alpha

    def set_progress(self, progress: float) -> None:
        """Tell the schedule where training is, from 0 (start) to 1 (end); the trainer integrations call it.

        Raises:
            `NEFTuneError`: progress outside [0, 1] or not finite.
        """
        if isinstance(progress, bool) or not isinstance(progress, (int, float)) or not 0.0 <= progress <= 1.0:
            raise NEFTuneError(f"progress must be a number in [0, 1], got {progress!r}; pass step / total_steps.")
        self._state.set_progress(float(progress))

    def set_step(self, step: int) -> None:
        """Restart neftune's own noise stream at training step `step` (integrations call it every step).

        With `config.seed` (or, in a multi-process run, the run's seed) the noise of a step depends only on
        (seed, rank, step), so a resumed run draws what the uninterrupted run drew. A single process without a
        seed draws from torch's global RNG, and this does nothing.
        """
        self._state.set_step(check_step(step))

    @property
    def active(self) -> bool:
        """True while a noise hook of this application sits on a module of the model.

        False after `remove()`, from the start when alpha is 0, and once the hooked module left the model
        (`merge_and_unload()` took the PEFT wrapper it was on away, `resize_token_embeddings` replaced it).
        """
        if self._removed:
            return False
        return any(hook.state is self._state for module in self._model.modules() for hook in noise_hooks(module))

    def _moved(self, old: nn.Module, new: nn.Module, path: str) -> None:
        """A PEFT wrapper now holds `old` at `path`: noise the wrapper's output, as if applied after PEFT."""
        for module in new.modules():
            for key, hook in list(module._forward_hooks.items()):
                if isinstance(hook, NoiseHook) and hook.state is self._state:
                    del module._forward_hooks[key]
        _register_noise_hook(self._state, path or type(new).__name__, new)
        self._modules = tuple(new if module is old else module for module in self._modules)
        logger.info(
            "NEFTune: '%s' was wrapped by %s after apply_neftune; the wrapper's output is noised now.",
            path,
            type(new).__name__,
        )

    def remove(self) -> int:
        """Remove every hook of this application from the model, also from copies PEFT made; idempotent.

        Returns:
            `int`: the number of noise hooks removed (0 on a second call).
        """
        self._removed = True
        return remove_hooks(self._model, self._state)

    def __enter__(self) -> NEFTuneHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        config = self._config
        return (
            f"NEFTuneHandle(alpha={config.alpha}, scaling={config.scaling!r}, "
            f"modules={len(self._modules)}, active={self.active})"
        )


def _carries_transformers_neftune(module: nn.Module) -> bool:
    """transformers' hook is registered on `module`. Its `neftune_noise_alpha` attribute alone is stale, not live
    NEFTune: transformers 4.x deletes it only on success, unsloth sets it without registering any hook."""
    return any(getattr(hook, "__name__", None) == _TRANSFORMERS_HOOK_NAME for hook in module._forward_hooks.values())


def _refuse_conflicts(model: nn.Module, path: str, target: nn.Module) -> None:
    """A target, anything inside it, or anything around it already noised means double noise."""
    for module in [*target.modules(), *ancestors(model, target)]:
        for hook in noise_hooks(module):
            raise NEFTuneError(
                f"NEFTune is already active on '{path}' (alpha={hook.state.config.alpha}); "
                "call remove_neftune(model) or handle.remove() first."
            )
        if _carries_transformers_neftune(module):
            raise NEFTuneError(
                f"'{path}' already carries transformers' own NEFTune hook (neftune_noise_alpha); the noise would be "
                "added twice. Leave TrainingArguments.neftune_noise_alpha unset when using neftune."
            )


def apply_neftune(
    model: nn.Module,
    alpha_or_config: float | NEFTuneConfig = 5.0,
    *,
    filter_fn: FilterFn | None = None,
    module: nn.Module | None = None,
    skip_no_grad: bool = False,
    track_stats: bool = False,
) -> NEFTuneHandle:
    """Add NEFTune noise to a model's input embeddings during training.

    In training mode (the hooked module's `training` flag) every forward adds fresh noise
    `Uniform(-1, 1) * alpha / sqrt(L * d)` to the embedding output, where `d` is the hidden size and, by default,
    `L` is each sequence's own number of real tokens, with no noise on padding (the paper's training code,
    [Jain et al. 2023](https://arxiv.org/abs/2310.05914)). In eval mode the model is untouched.

    Args:
        model (`torch.nn.Module`):
            The model; DDP/FSDP/DeepSpeed/accelerate and `torch.compile` wrappers and PEFT models are accepted.
        alpha_or_config (`float` or `NEFTuneConfig`, defaults to 5.0):
            The noise magnitude alpha, or a full `NEFTuneConfig`. 0 applies nothing (and warns).
        filter_fn (`Callable[[nn.Module, str], bool]`, *optional*):
            Selects the module(s) to noise by `(module, qualified_name)`, for models without
            `get_input_embeddings()`.
        module (`torch.nn.Module`, *optional*):
            The exact module to noise. Takes precedence over everything else.
        skip_no_grad (`bool`, defaults to `False`):
            Add no noise to forwards run without autograd (`torch.no_grad`, `inference_mode`) even in training
            mode. Such forwards train nothing: reference log-probs, rollouts, metrics. The trainer integrations
            set it.
        track_stats (`bool`, defaults to `False`):
            Accumulate noise and embedding RMS on the device for `handle.read_stats()` (two extra reductions
            over the embedding output per forward).

    Returns:
        `NEFTuneHandle`: `.remove()` (or leave its `with` block) to take the noise off.

    Raises:
        `NEFTuneError` (a `ValueError`): bad alpha, no embedding found, or NEFTune already active.
        `TypeError`: alpha is not a number.

    Example:
        ```python
        from neftune import apply_neftune

        handle = apply_neftune(model, alpha=5.0)
        model.train()
        loss = model(**batch).loss  # embeddings noised
        handle.remove()
        ```
    """
    config = as_config(alpha_or_config)
    if not isinstance(model, nn.Module):
        raise TypeError(f"apply_neftune needs a torch.nn.Module, got {type(model).__name__}.")
    selection = select_targets(model, module, filter_fn, config.noise_decoder_inputs)
    targets = selection.targets
    for path, target in targets:
        _refuse_conflicts(model, path, target)
    model_config = getattr(unwrap_model(model), "config", None)
    state = NoiseState(
        config,
        skip_no_grad=skip_no_grad,
        track_stats=track_stats,
        placeholder_ids=placeholder_token_ids(model_config),
        quiet_inside=frozenset(id(scope) for scope in selection.quiet_inside),
        pad_token_id=pad_token_id(model_config),
    )
    if config.alpha == 0:
        _warn_alpha_zero()
        return NEFTuneHandle(model, config, [], state)

    handle = NEFTuneHandle(model, config, targets, state)
    watch = TargetWatch(handle._moved)
    parents: set[int] = set()
    for path, target in targets:
        for parent, name in _slots_holding(model, target):
            watch.watch(parent, name, path, target)
            parents.add(id(parent))
    recorded: set[int] = set()
    for path, target in targets:
        if state.schedule.varies:  # made now, not inside a (compiled) forward where its creation would be traced
            parameter = next(target.parameters(), None)
            state.schedule.factor_tensor(parameter.device if parameter is not None else torch.device("cpu"))
        _register_noise_hook(state, path or type(target).__name__, target)
        for ancestor in ancestors(model, target):
            if id(ancestor) in recorded:
                continue
            recorded.add(id(ancestor))
            recorder = LayoutRecorder.for_module(
                state.stack,
                ancestor,
                outermost=ancestor is model,
                on_enter=watch.check if id(ancestor) in parents else None,
            )
            ancestor.register_forward_pre_hook(recorder.before, with_kwargs=True)
            ancestor.register_forward_hook(recorder.after, always_call=True)
    logger.info(describe_application(handle))  # the one line per run the CLI shows (cli_support.py)
    return handle


def _register_noise_hook(state: NoiseState, name: str, module: nn.Module) -> None:
    module.register_forward_hook(NoiseHook(state, name, embedding_scale_source(module)))


def _slots_holding(model: nn.Module, target: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every (parent, attribute name) through which the model reaches `target`."""
    slots = []
    for path in paths_to(model, target):
        if path:
            parent_path, _, name = path.rpartition(".")
            slots.append((model.get_submodule(parent_path), name))
    return slots


def describe_application(handle: NEFTuneHandle) -> str:
    """The one log line of an application, with the factor to port alpha from transformers' flag."""
    config = handle.config
    line = (
        f"NEFTune active: alpha {config.alpha:g}, {config.scaling}, {config.noise} noise, hooked "
        f"{', '.join(handle.module_names)}"
    )
    factor = max((embed_scale_factor(module) for module in handle.modules), default=1.0)
    if factor != 1.0:
        line += (
            f". This model scales its embeddings by {factor:.3g}, and so does neftune's noise: alpha {config.alpha:g} "
            f"adds {factor:.3g}x the noise of transformers' hook (neftune_noise_alpha); use alpha "
            f"{config.alpha / factor:.3g} for the same noise"
        )
    return line


def _warn_alpha_zero() -> None:
    global _warned_alpha_zero
    if not _warned_alpha_zero:
        _warned_alpha_zero = True
        warnings.warn("NEFTune alpha is 0: no noise is added and no hook is registered.", UserWarning, stacklevel=3)


def remove_neftune(model: nn.Module) -> int:
    """Remove every neftune hook anywhere in `model`, including copies PEFT deep-copied after hooking; idempotent.

    Returns:
        `int`: the number of noise hooks removed.
    """
    return remove_hooks(model)


def is_neftune_active(model: nn.Module) -> bool:
    """True if some module of `model` carries a neftune noise hook."""
    return any(True for module in model.modules() for _ in noise_hooks(module))


@contextlib.contextmanager
def disable_noise(model: nn.Module) -> Iterator[None]:
    """Inside this block, neftune adds no noise to `model` even in training mode (e.g. reference log-probs).

    Example:
        ```python
        with disable_noise(model):
            reference_logps = model(**batch).logits
        ```
    """
    with contextlib.ExitStack() as suspended:
        for state in noise_states(model):
            suspended.enter_context(state.suspend())
        yield
