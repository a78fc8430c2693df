"""`clean_evaluation`: measure a model as it is, without neftune's noise, and hand it back in the modes it had."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .apply import disable_noise


@contextlib.contextmanager
def preserved_modes(model: nn.Module) -> Iterator[None]:
    """On leaving (also by an exception), every module of `model` gets back the `training` flag it had on entering.

    `model.train(flag)` alone would not do: it sets one flag on the whole tree, and a model whose parts were in
    different modes (a frozen, eval-mode backbone under a training head) would come back uniform.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}; pass the model itself.")
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        model.train(modes[0][1])  # through train(), so a module that overrides it still sees the call
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def clean_evaluation(model: nn.Module) -> Iterator[nn.Module]:
    """Inside this block `model` is in eval mode, runs without gradients and gets no neftune noise; afterwards
    each of its modules is back in the mode it had, even if the block raised.

    Example:
        ```python
        with clean_evaluation(model):
            heldout_loss = model(**batch).loss
        ```
    """
    with preserved_modes(model):
        model.eval()
        with torch.no_grad(), disable_noise(model):
            yield model
