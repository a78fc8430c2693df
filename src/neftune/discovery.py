"""Finding the module(s) to noise: through distributed/compile wrappers, PEFT, and `get_input_embeddings()`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .errors import NEFTuneError
from .model_families import encoder_decoder_stacks

FilterFn = Callable[[nn.Module, str], bool]

# PEFT classes that wrap one layer and call it from their forward (LoRA/DoRA layers, modules_to_save,
# trainable tokens). Matched by name so the torch-only core never imports peft.
# ModulesToSaveWrapper: PEFT < 0.15 derives it from nn.Module directly (later from AuxiliaryTrainingWrapper).
_PEFT_LAYER_WRAPPER_BASES = frozenset({"BaseTunerLayer", "AuxiliaryTrainingWrapper", "ModulesToSaveWrapper"})


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP / FSDP1 / DeepSpeed / accelerate (`.module`) and `torch.compile` (`._orig_mod`)."""
    while True:
        compiled = getattr(model, "_orig_mod", None)
        inner = model._modules.get("module")
        if isinstance(compiled, nn.Module):
            model = compiled
        elif isinstance(inner, nn.Module) and not hasattr(model, "get_input_embeddings"):
            model = inner
        else:
            return model


def is_peft_layer_wrapper(module: nn.Module) -> bool:
    return any(
        cls.__name__ in _PEFT_LAYER_WRAPPER_BASES and cls.__module__.startswith("peft.")
        for cls in type(module).__mro__
    )


def paths_to(root: nn.Module, target: nn.Module) -> list[str]:
    """Every qualified name under which `target` is reachable from `root` (shared/tied modules have several)."""
    return [name for name, module in root.named_modules(remove_duplicate=False) if module is target]


def ancestors(root: nn.Module, target: nn.Module) -> list[nn.Module]:
    """Every module on some path from `root` down to `target`, outermost first, `target` excluded."""
    found: dict[int, nn.Module] = {}
    for path in paths_to(root, target):
        parts = path.split(".") if path else []
        for depth in range(len(parts)):
            module = root.get_submodule(".".join(parts[:depth]))
            found.setdefault(id(module), module)
    return list(found.values())


def outermost_adapter_wrapper(root: nn.Module, path: str) -> str:
    """If the module at `path` is wrapped by PEFT (LoRA, modules_to_save, trainable tokens), the wrapper's path.

    Hooking the wrapper noises what the model really receives: the base embedding plus the adapter's delta,
    or whichever copy of a `modules_to_save` embedding is active.
    """
    parts = path.split(".") if path else []
    chosen = path
    for depth in range(len(parts) - 1, -1, -1):
        prefix = ".".join(parts[:depth])
        module = root.get_submodule(prefix)
        if is_peft_layer_wrapper(module):
            chosen = prefix
        elif not isinstance(module, nn.ModuleDict):  # modules_to_save sits in a ModuleDict inside the wrapper
            break
    return chosen


@dataclass(frozen=True)
class Selection:
    """What to hook, and the modules inside whose forward the hooked modules must add no noise."""

    targets: list[tuple[str, nn.Module]]
    quiet_inside: tuple[nn.Module, ...] = ()


def _input_embeddings_of(module: nn.Module) -> nn.Module | None:
    getter = getattr(module, "get_input_embeddings", None)
    if not callable(getter):
        return None
    try:
        embedding = getter()
    except (NotImplementedError, AttributeError):
        return None
    return embedding if isinstance(embedding, nn.Module) else None


def _located(model: nn.Module, embedding: nn.Module, owner: str) -> tuple[str, nn.Module]:
    paths = paths_to(model, embedding)
    if not paths:
        raise NEFTuneError(
            f"{owner}.get_input_embeddings() returned a module that is not part of the model "
            f"({type(embedding).__name__}); pass module= the embedding layer the model's forward calls."
        )
    path = outermost_adapter_wrapper(model, paths[0])
    return path, model.get_submodule(path)


def find_input_embeddings(model: nn.Module, noise_decoder_inputs: bool = True) -> Selection:
    """The input embedding(s) the model's forward really calls.

    Decoder-only models: `get_input_embeddings()`. Encoder-decoder models: transformers 5 gives the encoder and
    the decoder their own embedding modules (tied to `shared`, which forward never calls), so the encoder's
    and, if asked, the decoder's are hooked. Where both stacks call one shared module (transformers 4), it is
    hooked once and kept quiet inside the decoder when decoder inputs are not to be noised.
    """
    inner = unwrap_model(model)
    name = type(inner).__name__
    stacks = encoder_decoder_stacks(inner)
    if stacks is not None:
        encoder, decoder = stacks
        encoder_embedding = _input_embeddings_of(encoder)
        decoder_embedding = _input_embeddings_of(decoder)
        if encoder_embedding is not None and decoder_embedding is not None:
            targets = [_located(model, encoder_embedding, f"{name} encoder")]
            if decoder_embedding is encoder_embedding:  # Quirk.SHARED_EMBEDDING, transformers 4
                return Selection(targets, () if noise_decoder_inputs else (decoder,))
            if noise_decoder_inputs:
                targets.append(_located(model, decoder_embedding, f"{name} decoder"))
            return Selection(targets)
    embedding = _input_embeddings_of(inner)
    if embedding is None:
        raise NEFTuneError(
            f"Cannot find the input embedding of {name}: it has no working get_input_embeddings(). "
            "Pass module=<the embedding layer> or filter_fn=lambda module, name: name.endswith('embed_tokens')."
        )
    return Selection([_located(model, embedding, name)])


def select_targets(
    model: nn.Module, module: nn.Module | None, filter_fn: FilterFn | None, noise_decoder_inputs: bool = True
) -> Selection:
    """The modules to hook, by the precedence `module` > `filter_fn` > the input embedding(s)."""
    if module is not None and filter_fn is not None:
        raise NEFTuneError("Pass either module= or filter_fn= to apply_neftune, not both.")
    if module is not None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"module= must be a torch.nn.Module, got {type(module).__name__}.")
        paths = paths_to(model, module)
        if not paths:
            raise NEFTuneError(
                f"module= ({type(module).__name__}) is not a submodule of the model {type(model).__name__}; "
                "pass a layer of this model (e.g. model.get_input_embeddings())."
            )
        return Selection([(paths[0], module)])
    if filter_fn is not None:
        selected = [(name, sub) for name, sub in model.named_modules() if filter_fn(sub, name)]
        if not selected:
            raise NEFTuneError(
                f"filter_fn selected no module of {type(model).__name__}; it is called as "
                "filter_fn(module, qualified_name) for every submodule and must return True for the embedding."
            )
        _refuse_nested(selected)
        return Selection(selected)
    return find_input_embeddings(model, noise_decoder_inputs)


def _refuse_nested(selected: list[tuple[str, nn.Module]]) -> None:
    """Two selected modules where one contains the other would noise the same tokens twice."""
    for outer_name, outer in selected:
        for inner_name, inner in selected:
            if inner is not outer and any(sub is inner for sub in outer.modules()):
                raise NEFTuneError(
                    f"filter_fn selected both '{outer_name}' and '{inner_name}', which is inside it; the noise would "
                    "be added twice. Select only the outer module."
                )
