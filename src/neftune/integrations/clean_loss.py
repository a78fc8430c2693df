"""The paper's first signature: the training loss measured with the noise off, on a fixed set of training examples.

The loss logged during NEFTune training includes the noise and looks like the baseline's; the clean loss of the
same examples is what shows the regularisation (it ends higher with NEFTune).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import NEFTuneError
from ..eval_mode import clean_evaluation

Batch = Mapping[str, Any]


def _first_examples(dataset: Any, count: int) -> list[Any]:
    if hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
        return [dataset[index] for index in range(min(count, len(dataset)))]
    return list(itertools.islice(iter(dataset), count))  # iterable datasets: the stream's head


class CleanLossProbe:
    """Collated batches of the first `samples` training examples, and their loss with the noise off."""

    def __init__(self, batches: Sequence[Batch]) -> None:
        if not batches:
            raise NEFTuneError("The clean-loss probe got no training examples; the training dataset is empty.")
        self.batches = list(batches)

    @classmethod
    def from_data(
        cls, dataset: Any, collate_fn: Callable[[list[Any]], Batch], samples: int, batch_size: int
    ) -> CleanLossProbe:
        examples = _first_examples(dataset, samples)
        chunks = [examples[start : start + batch_size] for start in range(0, len(examples), batch_size)]
        return cls([collate_fn(chunk) for chunk in chunks])

    def loss(self, model: nn.Module) -> float:
        """Token-weighted mean loss over the probe batches, in eval mode, without noise and without gradients."""
        device = next(model.parameters()).device
        total = torch.zeros((), dtype=torch.float64, device=device)
        weight = torch.zeros((), dtype=torch.float64, device=device)
        with clean_evaluation(model):
            for batch in self.batches:
                inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                loss = getattr(model(**inputs), "loss", None)
                if loss is None:
                    raise NEFTuneError(
                        "The clean training loss needs batches the model turns into a loss (batches with "
                        f"labels); this model returned none for a batch with keys {sorted(inputs)}. "
                        "Set neftune_clean_loss_steps=None (clean_loss_steps=None) for this trainer."
                    )
                labels = inputs.get("labels")
                tokens = (labels != -100).sum() if isinstance(labels, torch.Tensor) else torch.ones((), device=device)
                total += loss.double() * tokens
                weight += tokens
        return float(total / weight.clamp_min(1))
