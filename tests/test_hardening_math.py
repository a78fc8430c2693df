"""Paths that once gave wrong noise or wrong gradients: encoder-decoder layouts, checkpoint recomputes, interrupts."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers import padding_mask
from torch import nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

from neftune import NEFTuneConfig, apply_neftune, disable_noise

ALPHA = 5.0
HIDDEN = 16


# --- 1. An encoder-decoder decoder given no mask of its own ------------------------------------------------------


@pytest.mark.parametrize("family_name", ["T5", "BART"])
def test_decoder_without_its_own_mask_takes_its_full_length_not_the_encoders_mask(family_name: str) -> None:
    pytest.importorskip("transformers")
    from support_matrix import FAMILIES, HIDDEN, _capture

    family = next(f for f in FAMILIES if f.name == family_name)
    torch.manual_seed(0)
    model = family.build()
    apply_neftune(model, ALPHA)
    model.train()
    seq_len = 12  # encoder and decoder padded to the same length: the shapes agree, the masks must not be mixed
    generator = torch.Generator().manual_seed(1)
    inputs = {
        "input_ids": torch.randint(2, 140, (2, seq_len), generator=generator),
        "attention_mask": padding_mask([5, 12], seq_len),
        "decoder_input_ids": torch.randint(2, 140, (2, seq_len), generator=generator),
    }
    noisy = _capture(model, family.capture, inputs)
    with disable_noise(model):
        clean = _capture(model, family.capture, inputs)
    decoder_noise = (noisy[1] - clean[1]).double() / family.scale
    bound = ALPHA / math.sqrt(seq_len * HIDDEN)
    for row in range(2):  # every decoder token is real: each row is one sequence of length 12
        per_token = decoder_noise[row].abs().amax(-1)
        assert (per_token > 0.5 * bound).all(), per_token
        assert per_token.max() <= bound * (1 + 1e-3)
        assert per_token.max() >= 0.97 * bound
    encoder_noise = (noisy[0] - clean[0]).double() / family.scale
    assert (encoder_noise[0, 5:] == 0).all()  # the encoder keeps its own mask
    assert encoder_noise[0, :5].abs().max() >= 0.97 * ALPHA / math.sqrt(5 * HIDDEN)


class Block(nn.Module):
    """A region holding the embedding; given only ids, like a stack its model gave the mask to."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, HIDDEN)
        self.layer = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.layer(self.embed(input_ids)))


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()

    def get_input_embeddings(self) -> nn.Module:
        return self.block.embed

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.block(input_ids)


def test_an_inner_module_given_the_same_ids_uses_the_outer_mask() -> None:
    model = Outer()
    nn.init.zeros_(model.block.embed.weight)
    apply_neftune(model, ALPHA)
    seen: list[torch.Tensor] = []
    model.block.layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    model.train()
    mask = padding_mask([3, 8], 8)
    model(torch.ones(2, 8, dtype=torch.long), attention_mask=mask)
    noise = seen[0].double()
    assert (noise[0, 3:] == 0).all()
    assert noise[0, :3].abs().max() >= 0.97 * ALPHA / math.sqrt(3 * HIDDEN)


# --- 2. Activation checkpointing around the embedding ------------------------------------------------------------


class CheckpointedNet(nn.Module):
    """Embedding, dropout and a layer in one region, run plain or under one of torch's checkpointing routes."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.stages = nn.Sequential(EmbedStage(), nn.Dropout(0.3), nn.Linear(HIDDEN, HIDDEN), nn.Tanh())
        self.gate = nn.Parameter(torch.ones(HIDDEN))  # a float input requiring grad, as reentrant needs
        self.head = nn.Linear(HIDDEN, 4)

    def get_input_embeddings(self) -> nn.Module:
        return self.stages[0].embed

    def _region(self, input_ids: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.stages(input_ids) * gate
        return result

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.mode == "plain":
            hidden = self._region(input_ids, self.gate)
        elif self.mode in ("reentrant", "non_reentrant"):
            use_reentrant = self.mode == "reentrant"
            hidden = checkpoint(self._region, input_ids, self.gate, use_reentrant=use_reentrant)
        else:  # checkpoint_sequential
            hidden = checkpoint_sequential(self.stages, 2, input_ids, use_reentrant=False) * self.gate
        mask = attention_mask.unsqueeze(-1).float() if attention_mask is not None else 1.0
        out: torch.Tensor = (self.head(hidden) * mask).square().sum()
        return out


class EmbedStage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, HIDDEN)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.embed(input_ids)
        return result


def _wrapped_by_apply_activation_checkpointing() -> nn.Module:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    model = CheckpointedNet("plain")
    apply_activation_checkpointing(model, check_fn=lambda module: isinstance(module, nn.Sequential))
    return model


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "reentrant": lambda: CheckpointedNet("reentrant"),
    "non_reentrant": lambda: CheckpointedNet("non_reentrant"),
    "checkpoint_sequential": lambda: CheckpointedNet("sequential"),
    "apply_activation_checkpointing": _wrapped_by_apply_activation_checkpointing,
}


def _gradients(model: nn.Module, config: NEFTuneConfig, steps: int = 2) -> tuple[list[torch.Tensor], Any]:
    torch.manual_seed(0)
    reference = CheckpointedNet("plain")
    model.load_state_dict(reference.state_dict())
    handle = apply_neftune(model, config)
    model.train()
    ids = torch.randint(0, 32, (3, 10), generator=torch.Generator().manual_seed(2))
    mask = padding_mask([10, 6, 3], 10)
    grads: list[torch.Tensor] = []
    torch.manual_seed(123)
    for step in range(steps):
        handle.set_step(step)
        model.zero_grad()
        model(ids, attention_mask=mask).backward()
        grads += [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
    counts = handle.counts
    handle.remove()
    return grads, counts


RNG_MODES = {
    "global_rng": {},
    "seeded": {"seed": 7},
    "per_rank": {"world_size": 2},
}


@pytest.mark.parametrize("rng_mode", sorted(RNG_MODES))
@pytest.mark.parametrize("route", sorted(BUILDERS))
@pytest.mark.parametrize("scaling", ["per_sequence", "padded"])
def test_checkpoint_recompute_adds_the_forwards_noise_so_gradients_match(
    route: str, rng_mode: str, scaling: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = dict(RNG_MODES[rng_mode])
    if options.pop("world_size", None):  # the launcher's variables: neftune then seeds a stream per rank
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "1")
    config = NEFTuneConfig(alpha=ALPHA, scaling=scaling, **options)
    expected, plain_counts = _gradients(CheckpointedNet("plain"), config)
    got, counts = _gradients(BUILDERS[route](), config)
    assert len(got) == len(expected) > 0
    difference = max(float((a - b).abs().max()) for a, b in zip(got, expected, strict=True))
    assert difference == 0.0, f"max gradient difference {difference}"
    assert counts.noised == plain_counts.noised == 2  # one noised call per forward, the recompute not counted


def test_checkpoint_recompute_of_a_suspended_forward_adds_no_noise() -> None:
    config = NEFTuneConfig(alpha=ALPHA, seed=1)
    model = CheckpointedNet("non_reentrant")
    apply_neftune(model, config)
    model.train()
    ids = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 6, dtype=torch.long)
    torch.manual_seed(5)
    with disable_noise(model):
        loss = model(ids, attention_mask=mask)
    loss.backward()  # the recompute runs outside disable_noise: it must still match the clean forward
    recomputed = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    plain = CheckpointedNet("plain")
    plain.load_state_dict(model.state_dict())
    torch.manual_seed(5)
    plain.train()
    plain(ids, attention_mask=mask).backward()
    for a, b in zip(recomputed, plain.parameters(), strict=True):
        assert b.grad is not None and torch.equal(a, b.grad)


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def _max_difference(got: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    assert len(got) == len(expected) > 0
    return max(float((a - b).abs().max()) for a, b in zip(got, expected, strict=True))


def _two_forwards_then_backwards_in_order(model: nn.Module, config: NEFTuneConfig) -> list[torch.Tensor]:
    """The same ids tensor through two noised forwards, then each loss's backward in forward order."""
    apply_neftune(model, config)
    model.train()
    ids = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(4))
    torch.manual_seed(321)
    first, second = model(ids), model(ids)
    grads = []
    for loss in (first, second):
        model.zero_grad()
        loss.backward()
        grads += _grads(model)
    return grads


@pytest.mark.parametrize("rng_mode", ["global_rng", "seeded"])
@pytest.mark.parametrize("route", ["reentrant", "non_reentrant"])
def test_two_forwards_of_one_ids_tensor_each_recompute_their_own_noise(route: str, rng_mode: str) -> None:
    """Backward in forward order: the first recompute must take the first forward's noise, not the newest. Told
    apart by torch's RNG state, which checkpointing restores (neftune's own draws or the dropout between forwards
    advance it)."""
    config = NEFTuneConfig(alpha=ALPHA, **RNG_MODES[rng_mode])
    torch.manual_seed(0)
    plain = CheckpointedNet("plain")
    checkpointed = BUILDERS[route]()
    checkpointed.load_state_dict(plain.state_dict())
    expected = _two_forwards_then_backwards_in_order(plain, config)
    got = _two_forwards_then_backwards_in_order(checkpointed, config)
    assert _max_difference(got, expected) == 0.0


@pytest.mark.parametrize("route", ["reentrant", "non_reentrant"])
def test_two_forwards_with_one_loss_recompute_their_own_noise_without_dropout(route: str) -> None:
    """neftune's own generator and no random op between the forwards: torch's RNG state cannot tell the replays
    apart, and one backward over both losses recomputes the newest first, which is what it takes."""
    config = NEFTuneConfig(alpha=ALPHA, seed=9)
    torch.manual_seed(0)
    plain = CheckpointedNet("plain")
    checkpointed = BUILDERS[route]()
    checkpointed.load_state_dict(plain.state_dict())
    grads = []
    for model in (plain, checkpointed):
        model.stages[1].p = 0.0
        apply_neftune(model, config)
        model.train()
        ids = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(4))
        (model(ids) + 2 * model(ids)).backward()
        grads.append(_grads(model))
    assert _max_difference(grads[1], grads[0]) == 0.0


class NestedNet(nn.Module):
    """An outer checkpointed region holding an inner checkpointed one with the embedding: the embedding runs in the
    outer region's recompute and again in the inner one's, both in one backward."""

    def __init__(self, outer: str | None, inner: str) -> None:
        super().__init__()
        self.outer, self.inner = outer, inner
        self.embed = nn.Embedding(32, HIDDEN)
        self.dropout = nn.Dropout(0.3)
        self.layer = nn.Linear(HIDDEN, HIDDEN)
        self.gate = nn.Parameter(torch.ones(HIDDEN))

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def _inner(self, input_ids: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.layer(self.dropout(self.embed(input_ids)))) * gate

    def _outer(self, input_ids: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        hidden = checkpoint(self._inner, input_ids, gate, use_reentrant=self.inner == "reentrant")
        result: torch.Tensor = self.layer(hidden) * gate
        return result

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.outer is None:
            hidden = self._inner(input_ids, self.gate)
            hidden = self.layer(hidden) * self.gate
        else:
            hidden = checkpoint(self._outer, input_ids, self.gate, use_reentrant=self.outer == "reentrant")
        return hidden.square().sum()


@pytest.mark.parametrize("rng_mode", ["global_rng", "seeded"])
@pytest.mark.parametrize(("outer", "inner"), [("non_reentrant", "non_reentrant"), ("reentrant", "non_reentrant")])
def test_nested_checkpoints_recompute_the_forwards_noise_twice(outer: str, inner: str, rng_mode: str) -> None:
    config = NEFTuneConfig(alpha=ALPHA, **RNG_MODES[rng_mode])
    ids = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(4))
    results = []
    for mode in (None, outer):
        torch.manual_seed(0)
        model = NestedNet(mode, inner)
        handle = apply_neftune(model, config)
        model.train()
        torch.manual_seed(5)
        model(ids).backward()
        results.append((_grads(model), handle.counts.noised))
    assert _max_difference(results[1][0], results[0][0]) == 0.0
    assert results[0][1] == results[1][1] == 1


@pytest.mark.parametrize("rng_mode", ["global_rng", "seeded"])
@pytest.mark.parametrize("route", ["reentrant", "non_reentrant"])
def test_a_second_backward_of_a_retained_graph_recomputes_the_same_noise(route: str, rng_mode: str) -> None:
    config = NEFTuneConfig(alpha=ALPHA, **RNG_MODES[rng_mode])
    ids = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(4))
    results = []
    for mode in ("plain", route):
        torch.manual_seed(0)
        model = BUILDERS[mode]() if mode != "plain" else CheckpointedNet("plain")
        apply_neftune(model, config)
        model.train()
        torch.manual_seed(5)
        loss = model(ids)
        loss.backward(retain_graph=True)
        first = _grads(model)
        model.zero_grad()
        loss.backward()
        results.append(first + _grads(model))
    assert _max_difference(results[1], results[0]) == 0.0


@pytest.mark.parametrize("rng_mode", ["global_rng", "seeded"])
@pytest.mark.parametrize("route", ["reentrant", "non_reentrant"])
def test_a_forward_without_noise_of_the_same_ids_recomputes_without_noise(route: str, rng_mode: str) -> None:
    """A noised and a clean loss of one batch, backpropagated together: the clean forward's recompute must not take
    the noised one's replay (and leave the noised one's recompute without)."""
    config = NEFTuneConfig(alpha=ALPHA, **RNG_MODES[rng_mode])
    ids = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(4))
    results = []
    for mode in ("plain", route):
        torch.manual_seed(0)
        model = BUILDERS[mode]() if mode != "plain" else CheckpointedNet("plain")
        handle = apply_neftune(model, config)
        model.train()
        torch.manual_seed(5)
        noisy = model(ids)
        with disable_noise(model):
            clean = model(ids)
        (noisy + 2 * clean).backward()
        results.append(_grads(model))
        assert handle.counts.noised == 1 and handle.counts.suspended == 1
    assert _max_difference(results[1], results[0]) == 0.0


def test_replays_already_recomputed_are_evicted_first_and_do_not_warn() -> None:
    from neftune.replay import MAX_REPLAYS

    model = CheckpointedNet("non_reentrant")
    handle = apply_neftune(model, NEFTuneConfig(alpha=ALPHA, seed=3))
    model.train()
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 32, (2, 6), generator=generator) for _ in range(MAX_REPLAYS + 1)]
    model(batches[0]).backward()  # recomputed: its replay may go first
    losses = [model(ids) for ids in batches[1:]]  # 16 more forwards, the store holds 16
    assert len(handle._state.replays) == MAX_REPLAYS and handle._state.replays.evicted == 0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        losses[0].backward()  # its replay survived
    model.zero_grad()


def test_forwards_skipped_without_autograd_between_a_forward_and_its_backward_leave_its_replay() -> None:
    """Generation or a reference model of the same ids tensor without autograd (`skip_no_grad`) between a noised
    forward and its backward: they leave no replay, so the recompute takes the noised forward's, with no warning."""
    import warnings

    from neftune.replay import MAX_REPLAYS

    ids = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(4))
    results = []
    for mode in ("plain", "non_reentrant"):
        torch.manual_seed(0)
        model = CheckpointedNet(mode)
        model.stages[1].p = 0.0  # torch's RNG state could not tell the forwards apart
        handle = apply_neftune(model, NEFTuneConfig(alpha=ALPHA, seed=6), skip_no_grad=True)
        model.train()
        loss = model(ids)
        with torch.no_grad():
            for _ in range(MAX_REPLAYS + 4):
                model(ids)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loss.backward()
        results.append(_grads(model))
        assert handle.counts.noised == 1 and handle.counts.no_grad == MAX_REPLAYS + 4
    assert _max_difference(results[1], results[0]) == 0.0


def test_noiseless_replays_never_push_out_a_noised_one_still_to_be_recomputed() -> None:
    from neftune.replay import MAX_REPLAYS

    model = CheckpointedNet("non_reentrant")
    handle = apply_neftune(model, NEFTuneConfig(alpha=ALPHA, seed=6))
    model.train()
    generator = torch.Generator().manual_seed(1)
    noised = [model(torch.randint(0, 32, (2, 6), generator=generator)) for _ in range(3)]
    with disable_noise(model):
        for _ in range(2 * MAX_REPLAYS):
            model(torch.randint(0, 32, (2, 6), generator=generator))
    store = handle._state.replays
    plans = [replay.plan for replay in store._replays]
    assert len(plans) == MAX_REPLAYS and sum(plan is not None for plan in plans) == 3
    assert store.evicted == 0
    for _ in range(MAX_REPLAYS):  # noised forwards do push out the oldest noised one, and that is counted
        model(torch.randint(0, 32, (2, 6), generator=generator))
    assert all(replay.plan is not None for replay in store._replays) and store.evicted == 3
    del noised


def test_replays_are_dropped_at_every_step_and_bounded() -> None:
    from neftune.replay import MAX_REPLAYS

    model = CheckpointedNet("plain")
    handle = apply_neftune(model, ALPHA)
    model.train()
    ids = torch.zeros(1, 4, dtype=torch.long)
    for _ in range(MAX_REPLAYS + 5):
        model(ids)  # never backpropagated: nothing consumes the replays
    state = handle._state
    assert len(state.replays) == MAX_REPLAYS
    handle.set_step(1)
    assert len(state.replays) == 0


# --- 3. An interrupt inside a forward ----------------------------------------------------------------------------


class InterruptingModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Inner()

    def get_input_embeddings(self) -> nn.Module:
        return self.inner.embed_tokens

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        result: torch.Tensor = self.inner(input_ids, attention_mask=attention_mask)
        return result


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(16, HIDDEN)
        nn.init.zeros_(self.embed_tokens.weight)
        self.interrupt: type[BaseException] | None = None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.interrupt is not None:
            raise self.interrupt()
        result: torch.Tensor = self.embed_tokens(input_ids)
        return result


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_frames_of_an_interrupted_forward_never_reach_a_later_one(interrupt: type[BaseException]) -> None:
    model = InterruptingModel()
    apply_neftune(model, ALPHA)
    model.train()
    ids = torch.zeros(2, 8, dtype=torch.long)
    model.inner.interrupt = interrupt
    with pytest.raises(interrupt):
        model(ids, attention_mask=padding_mask([2, 3], 8))
    model.inner.interrupt = None
    with torch.no_grad():
        noise = model(ids).double()  # no mask: every row is one sequence of 8 real tokens
    bound = ALPHA / math.sqrt(8 * HIDDEN)
    assert (noise.abs().amax(-1) > 0).all()
    assert noise.abs().max() <= bound * (1 + 1e-6)
    with pytest.raises(interrupt):  # interrupted again, then the inner module called on its own
        model.inner.interrupt = interrupt
        model(ids, attention_mask=padding_mask([2, 3], 8))
    model.inner.interrupt = None
    with torch.no_grad():
        noise = model.inner(ids.clone()).double()
    assert (noise.abs().amax(-1) > 0).all()


def test_a_recompute_whose_replay_was_evicted_warns() -> None:
    from neftune.replay import MAX_REPLAYS

    model = CheckpointedNet("non_reentrant")
    apply_neftune(model, NEFTuneConfig(alpha=ALPHA, seed=3))
    model.train()
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 32, (2, 6), generator=generator) for _ in range(MAX_REPLAYS + 1)]
    losses = [model(ids) for ids in batches]  # the first forward's replay is pushed out by the 17th
    with pytest.warns(RuntimeWarning, match=rf"more than {MAX_REPLAYS} noised forwards ran before their backward"):
        losses[0].backward()
