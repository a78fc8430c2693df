"""`NEFTuneCallback`: NEFTune for any transformers `Trainer` (and every TRL trainer), with its metrics in the logs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..apply import NEFTuneHandle, apply_neftune
from ..config import NEFTuneConfig, as_config
from ..discovery import FilterFn
from ..errors import NEFTuneError
from ..monitor import NoiseMonitor
from ..options import ALPHA, CLEAN_LOSS_SAMPLES, CLEAN_LOSS_STEPS, LOG_STATS, ON_SILENT, OnSilent
from .clean_loss import CleanLossProbe


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
    (reference log-probs of DPO/KTO with a PEFT policy, rollouts, metric passes) get no noise. Progress, the
    metrics and the no-silent-no-op check are a `NoiseMonitor`'s (neftune.monitor), shared with custom loops.

    Its position: transformers calls callbacks in list order, and `Trainer(callbacks=[...])` puts them after the
    reporting integrations that `report_to` enables (none by default), so those would log a step without the
    `neftune/...` entries; `state.log_history` and the console (added after user callbacks) have them either
    way. `NEFTuneCallback(5.0).attach(trainer)` puts it first through the Trainer's public API; neftune's
    `SFTTrainer`, `patch_transformers` and the axolotl plugin do that for you.

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
        self.monitor: NoiseMonitor | None = None
        self._pending: dict[str, float] = {}

    def release(self) -> None:
        """Remove the hooks of this callback's current application, if any (idempotent)."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        self.monitor = None
        self._probe = None
        self._pending = {}

    def attach(self, trainer: Any) -> NEFTuneCallback:
        """Add this callback to `trainer` ahead of every callback it already has, through its public API.

        transformers calls callbacks in list order, and `Trainer(callbacks=[...])` puts user callbacks after the
        reporting integrations of `report_to` (TensorBoard, W&B, ...), which read `logs` in their own `on_log`.
        Attached first, this callback's entries are in `logs` before any of them runs. Idempotent.

        Returns:
            `NEFTuneCallback`: this callback, so `NEFTuneCallback(5.0).attach(trainer)` reads as one line.
        """
        trainer.pop_callback(self)
        trainer.add_callback(self)  # transformers warns here when another NEFTuneCallback is listed already
        listed = trainer.callback_handler.callbacks
        others = [trainer.pop_callback(callback) for callback in list(listed) if callback is not self]
        listed.extend(others)  # back behind it as they were; add_callback would warn again about repeated classes
        return self

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.release()  # a run that raised never reached on_train_end: replace its hooks, never stack them
        model = kwargs.get("model")
        if model is None:
            raise NEFTuneError("NEFTuneCallback.on_train_begin received no model; it needs a transformers Trainer.")
        _refuse_split_sequences(args, self.config)
        self.handle = apply_neftune(
            model, self.config, filter_fn=self.filter_fn, skip_no_grad=True, track_stats=self.log_stats
        )
        self.monitor = NoiseMonitor(self.handle, log_stats=self.log_stats, on_silent=self.on_silent)
        self.monitor.start(state.global_step, state.max_steps)
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
        if self.monitor is not None:
            self.monitor.advance(state.global_step, state.max_steps)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if self._probe is not None and self.clean_loss_steps and state.global_step % self.clean_loss_steps == 0:
            self._pending["neftune/clean_train_loss"] = self._probe.loss(kwargs["model"])
            control.should_log = True  # log this step so the clean loss sits beside the noisy training loss
        return control

    def log_entries(self, state: TrainerState, logs: Mapping[str, float]) -> dict[str, float]:
        """The `neftune/...` entries for `logs`, once: empty unless `logs` is a training log (it has the training
        `loss`; an evaluation between logging steps and the training summary have none) and a training step ran
        since they were last taken.

        A trainer that owns the callback (neftune's `SFTTrainer`) calls it in its `log()` override, before
        `Trainer.log` copies `logs` into `state.log_history` and calls the reporting callbacks.
        """
        if self.monitor is None or "loss" not in logs or not self.monitor.has_new_steps(state.global_step):
            return {}
        entries, self._pending = self._pending, {}
        entries.update(self.monitor.log_entries(state.global_step))
        return entries

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """For trainers that do not call `log_entries` themselves: add the entries to `logs` and the history."""
        logs = kwargs.get("logs")
        entries = self.log_entries(state, logs) if logs is not None else {}
        if logs is None or not entries:
            return  # not a training log, no training step since the last one, or the trainer took them already
        logs.update(entries)  # the callbacks after this one (the console's, transformers adds it last) see them
        # `Trainer.log` appended its copy of `logs` to the history before calling on_log: complete that entry.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(entries)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.release()
