"""`NoiseMonitor`: what a training loop does with an application besides training, for any loop or framework.

Three things every integration needs, kept here so the transformers callback, the TRL trainer and a custom loop
share one implementation:
- progress: the schedule's position and the seeded noise stream follow the optimizer step (`advance`);
- the metrics of a logging interval: the alpha in force, noise and embedding RMS, noised forwards (`log_entries`);
- no silent no-op: an interval of training steps in which the hooked module never added noise raises (or warns),
  with the reason read from the call counts (eval mode, no autograd, `disable_noise`, never called).

```python
handle = apply_neftune(model, 5.0, skip_no_grad=True, track_stats=True)
monitor = NoiseMonitor(handle)
for step, batch in enumerate(loader):
    monitor.advance(step, total_steps)
    ...  # forward, backward, optimizer step
    if (step + 1) % 10 == 0:
        print(monitor.log_entries(step + 1))
```
"""

from __future__ import annotations

import logging
import warnings

from .apply import NEFTuneHandle, check_step
from .errors import NEFTuneError
from .options import LOG_STATS, ON_SILENT, OnSilent
from .state import CallCounts

logger = logging.getLogger("neftune")


class NoiseMonitor:
    """Progress, interval metrics and the no-silent-no-op check of one `apply_neftune` application.

    Args:
        handle (`NEFTuneHandle`): the application to follow.
        log_stats (`bool`, defaults to `True`): log noise and embedding RMS (the handle must track them,
            `apply_neftune(..., track_stats=True)`, else `NEFTuneError`); False logs only `neftune/alpha` and
            `neftune/noised_calls`.
        on_silent (`"raise"` or `"warn"`, defaults to `"raise"`): what an interval without noise does.
    """

    def __init__(
        self, handle: NEFTuneHandle, *, log_stats: bool = LOG_STATS.default, on_silent: OnSilent = ON_SILENT.default
    ) -> None:
        self.handle = handle
        self.log_stats = LOG_STATS.validate(log_stats)
        self.on_silent = ON_SILENT.validate(on_silent)
        if self.log_stats and not handle.tracks_stats:  # its RMS would be NaN at every log
            raise NEFTuneError(
                "NoiseMonitor(log_stats=True) needs a handle that measures the noise: apply_neftune(..., "
                "track_stats=True), or NoiseMonitor(handle, log_stats=False) to log only the alpha and the counts."
            )
        self._last_step = 0
        self._last_counts = CallCounts()

    def start(self, step: int, max_steps: int | None) -> None:
        """Begin following training at optimizer step `step` (0, or where a resumed run starts)."""
        self.advance(step, max_steps)  # checks the step
        self._last_step = step
        self._last_counts = self.handle.counts
        self.handle.read_stats()  # the first interval starts now

    def advance(self, step: int, max_steps: int | None) -> None:
        """The schedule's progress and the seeded noise stream follow the optimizer step about to run."""
        check_step(step)
        if self.handle.active:
            total = max_steps or 0
            self.handle.set_progress(min(step / total, 1.0) if total > 0 else 0.0)
            self.handle.set_step(step)

    def has_new_steps(self, step: int) -> bool:
        """Whether training steps ran since the last `log_entries` (False for an evaluation log at the same step)."""
        return step != self._last_step

    def log_entries(self, step: int) -> dict[str, float]:
        """The `neftune/...` entries for a log written at optimizer step `step`, then a new interval.

        Empty when no training step ran since the last call (an evaluation log, the final summary), and once the
        hooks are gone. Raises `NEFTuneError` (or warns, with `on_silent="warn"`) when the interval's training steps
        added no noise.
        """
        if check_step(step) < self._last_step:
            raise NEFTuneError(
                f"NoiseMonitor.log_entries: step {step} is before step {self._last_step}, the last one logged; pass "
                "the optimizer step, which only grows (call start() to follow a new run)."
            )
        if not self.has_new_steps(step):
            return {}
        steps, self._last_step = step - self._last_step, step
        if not self.handle.active:
            return {}
        stats = self.handle.read_stats()
        self._check_noise_fired(steps)
        if self.log_stats:
            return stats.as_log()
        return {"neftune/alpha": stats.alpha, "neftune/noised_calls": float(stats.noised_calls)}

    def _check_noise_fired(self, steps: int) -> None:
        now = self.handle.counts
        interval, self._last_counts = now - self._last_counts, now
        if interval.noised + interval.scheduled_off > 0:
            return  # noise was added, or the schedule set alpha to 0 on purpose
        names = ", ".join(f"'{name}'" for name in self.handle.module_names)
        calls = interval.total
        if calls == 0:
            why = (
                f"the hooked module {names} was never called by the model's forward (is the embedding computed "
                "elsewhere, or are inputs_embeds passed in?); pass module= / filter_fn= for the layer forward calls"
            )
        else:
            why = (
                f"the hooked module {names} was called {calls} times: {interval.eval_mode} in eval mode, "
                f"{interval.no_grad} without autograd, {interval.suspended} inside disable_noise; put the embedding "
                "in training mode (model.train()); a reentrant activation checkpoint around the embedding runs its "
                "forward without autograd: use use_reentrant=False"
            )
        message = f"NEFTune added no noise during the last {steps} training step(s): {why}."
        if self.on_silent == "raise":
            raise NEFTuneError(message)
        logger.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
