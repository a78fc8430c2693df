"""`NEFTuneCallback`: NEFTune for any transformers `Trainer` (and every TRL trainer), with its metrics in the logs."""

from __future__ import annotations

import inspect
import logging
import warnings
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..apply import NEFTuneHandle, apply_neftune
from ..config import NEFTuneConfig, as_config
from ..discovery import FilterFn
from ..errors import NEFTuneError
from ..options import ALPHA, CLEAN_LOSS_SAMPLES, CLEAN_LOSS_STEPS, LOG_STATS, ON_SILENT, OnSilent
from ..state import CallCounts
from .clean_loss import CleanLossProbe

logger = logging.getLogger("neftune")


def _refuse_split_sequences(args: TrainingArguments, config: NEFTuneConfig) -> None:
    """Context and sequence parallelism give each rank a slice of every sequence: per-sequence L would be local."""
    parallelism = getattr(args, "parallelism_config", None)
    split = [name for name in ("cp", "sp") if (getattr(parallelism, f"{name}_size", None) or 1) > 1]
    if split and config.scaling == "per_sequence":
        raise NEFTuneError(
            f"NEFTune with {' and '.join(split)}_size > 1: context/sequence parallelism splits every sequence across "
            "ranks, so the embedding hook sees a local slice and its L would be the local length. This is not "
            "supported; train without context/sequence parallelism, or use scaling='padded' (L = the local slice's "
            "padded length, as transformers' hook would use)."
        )


class NEFTuneCallback(TrainerCallback):
    """Applies NEFTune at train begin and removes it at train end, for any `transformers.Trainer`.

    At every logging step it adds `neftune/alpha`, `neftune/noise_rms`, `neftune/embed_rms`,
    `neftune/noise_to_signal` and `neftune/noised_calls` to the Trainer's logs (so to `state.log_history`, the
    console, TensorBoard and W&B), and `neftune/clean_train_loss` when asked. Forwards without autograd
    (reference log-probs of DPO/KTO with a PEFT policy, rollouts, metric passes) get no noise.

    A callback cannot see an exception raised by `train()`: a later `on_train_begin` replaces the hooks left by a
    failed run. For an exception-safe plain `Trainer`, use the handle instead:
    `with apply_neftune(trainer.model, 5.0): trainer.train()`.

    Args:
        alpha_or_config (`float` or `NEFTuneConfig`, defaults to 5.0): the noise.
        clean_loss_steps (`int`, *optional*): every this many optimizer steps, log the loss of the first
            `clean_loss_samples` training examples with the noise off (`neftune/clean_train_loss`).
        clean_loss_samples (`int`, defaults to 16): how many training examples the clean loss uses.
        log_stats (`bool`, defaults to `True`): measure the noise and embedding RMS (two extra reductions per
            forward, synced once per logging step).
        on_silent (`"raise"` or `"warn"`, defaults to `"raise"`): what to do when a logging interval of training
            passed without any noise being added (embedding in eval mode, a module forward never calls).
        filter_fn (`Callable[[nn.Module, str], bool]`, *optional*): picks the module(s) to noise, for models
            without `get_input_embeddings()` (see `apply_neftune`).

    Example:
        ```python
        from transformers import Trainer
        from neftune import NEFTuneCallback

        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[NEFTuneCallback(5.0)])
        trainer.train()
        ```
    """

    def __init__(
        self,
        alpha_or_config: float | NEFTuneConfig = ALPHA.default,
        *,
        clean_loss_steps: int | None = CLEAN_LOSS_STEPS.default,
        clean_loss_samples: int = CLEAN_LOSS_SAMPLES.default,
        log_stats: bool = LOG_STATS.default,
        on_silent: OnSilent = ON_SILENT.default,
        filter_fn: FilterFn | None = None,
    ) -> None:
        self.config = as_config(alpha_or_config)
        self.filter_fn = filter_fn
        # Defaults and checks from neftune.options (tests/test_options.py keeps this signature in step with it).
        self.clean_loss_steps = CLEAN_LOSS_STEPS.validate(clean_loss_steps)
        self.clean_loss_samples = CLEAN_LOSS_SAMPLES.validate(clean_loss_samples)
        self.log_stats = LOG_STATS.validate(log_stats)
        self.on_silent = ON_SILENT.validate(on_silent)
        self.handle: NEFTuneHandle | None = None
        self._probe: CleanLossProbe | None = None
        self._pending: dict[str, float] = {}
        self._last_step = 0
        self._last_counts = CallCounts()

    def release(self) -> None:
        """Remove the hooks of this callback's current application, if any (idempotent)."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        self._probe = None
        self._pending = {}

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.release()  # a run that raised never reached on_train_end: replace its hooks, never stack them
        model = kwargs.get("model")
        if model is None:
            raise NEFTuneError("NEFTuneCallback.on_train_begin received no model; it needs a transformers Trainer.")
        _refuse_split_sequences(args, self.config)
        self._run_first_on_log()
        self.handle = apply_neftune(
            model, self.config, filter_fn=self.filter_fn, skip_no_grad=True, track_stats=self.log_stats
        )
        self._advance(state)
        self._last_step = state.global_step
        self._last_counts = self.handle.counts
        self.handle.read_stats()  # start the interval now
        if self.clean_loss_steps is not None:
            dataloader = kwargs.get("train_dataloader")
            if dataloader is None:
                raise NEFTuneError("clean_loss_steps needs the Trainer's train_dataloader, which was not passed.")
            self._probe = CleanLossProbe.from_data(
                dataloader.dataset, dataloader.collate_fn, self.clean_loss_samples, args.per_device_train_batch_size
            )

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._advance(state)

    def _advance(self, state: TrainerState) -> None:
        """Schedule progress and the seeded noise stream follow the optimizer step about to run."""
        if self.handle is not None and self.handle.active:
            total = state.max_steps or 0
            self.handle.set_progress(min(state.global_step / total, 1.0) if total > 0 else 0.0)
            self.handle.set_step(state.global_step)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if self._probe is not None and self.clean_loss_steps and state.global_step % self.clean_loss_steps == 0:
            self._pending["neftune/clean_train_loss"] = self._probe.loss(kwargs["model"])
            control.should_log = True  # log this step so the clean loss sits beside the noisy training loss
        return control

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        logs = kwargs.get("logs")
        if self.handle is None or logs is None or state.global_step == self._last_step:
            return  # not training, or no training step since the last log (an eval or the final summary)
        entries = dict(self._pending)
        self._pending = {}
        if self.handle.active:
            stats = self.handle.read_stats()
            self._check_noise_fired(state.global_step - self._last_step)
            entries.update(stats.as_log() if self.log_stats else {"neftune/alpha": stats.alpha})  # alpha in force
            if not self.log_stats:
                entries["neftune/noised_calls"] = float(stats.noised_calls)
        self._last_step = state.global_step
        logs.update(entries)
        # Trainer.log appended a copy of `logs` to the history before calling on_log.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(entries)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.release()

    def _check_noise_fired(self, steps: int) -> None:
        """No silent no-op: a logging interval of training with zero noised forwards is an error."""
        assert self.handle is not None
        now = self.handle.counts
        before, self._last_counts = self._last_counts, now
        if now.noised + now.scheduled_off > before.noised + before.scheduled_off:
            return  # noise was added, or the schedule set alpha to 0 on purpose
        names = ", ".join(f"'{name}'" for name in self.handle.module_names)
        calls = now.total - before.total
        if calls == 0:
            why = (
                f"the hooked module {names} was never called by the model's forward (is the embedding computed "
                "elsewhere, or are inputs_embeds passed in?); pass module= / filter_fn= for the layer forward calls"
            )
        else:
            why = (
                f"the hooked module {names} was called {calls} times: {now.eval_mode - before.eval_mode} in eval "
                f"mode, {now.no_grad - before.no_grad} without autograd, {now.suspended - before.suspended} inside "
                "disable_noise; put the embedding in training mode (model.train()); a reentrant activation "
                "checkpoint around the embedding runs its forward without autograd: use use_reentrant=False"
            )
        message = f"NEFTune added no noise during the last {steps} training step(s): {why}."
        if self.on_silent == "raise":
            raise NEFTuneError(message)
        logger.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)

    def _run_first_on_log(self) -> None:
        """Move this callback to the front of the Trainer's callback list.

        The reporting callbacks (console, TensorBoard, W&B) are placed before user callbacks and read `logs` in
        `on_log`; ours must add its entries first. transformers gives callbacks no handle to their handler, so it
        is found on the stack (the `CallbackHandler` calling us holds us in `.callbacks`). Moving an element from
        index i to 0 keeps the handler's running loop correct: the elements after i keep their positions.
        """
        frame = inspect.currentframe()
        for _ in range(8):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                break
            callbacks = getattr(frame.f_locals.get("self"), "callbacks", None)
            if isinstance(callbacks, list):
                for index, callback in enumerate(callbacks):
                    if callback is self:
                        callbacks.insert(0, callbacks.pop(index))
                        return
