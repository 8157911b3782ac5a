"""The train step: compiled == eager, accumulation, clipping, fp16 scaling, determinism."""

from __future__ import annotations

import functools

import pytest
import torch

from craft import tree
from craft.models import gpt
from craft.optim import SGD, AdamW, Schedule
from craft.train import init_state, make_train_step, to_device
from craft.train.sharded import OptimizerShards

CFG = gpt.GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32)
LOSS = functools.partial(gpt.loss, cfg=CFG)
CONSTANT = Schedule(kind="constant", peak_lr=1e-3)
SGD_ = SGD(momentum=0.9)


def batch(b: int, t: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    x = torch.randint(0, CFG.vocab(), (b, t + 1), generator=torch.Generator().manual_seed(seed))
    return {"inputs": x[:, :-1].clone(), "targets": x[:, 1:].clone()}


def run(steps: int, batches: list[dict], *, seed: int = 0, cfg: gpt.GPTConfig = CFG, **options):
    optimizer = options.pop("optimizer", AdamW())
    state = init_state(gpt.init(cfg, seed=seed), optimizer, seed=seed)
    step = make_train_step(
        functools.partial(gpt.loss, cfg=cfg),
        optimizer,
        options.pop("schedule", CONSTANT),
        **options,
    )
    history = []
    for i in range(steps):
        state, metrics = step(state, batches[i % len(batches)])
        history.append({k: v.item() for k, v in metrics.items()})
    return state, history


def assert_trees_close(a: object, b: object, **tolerance: float) -> None:
    for x, y in zip(tree.leaves(a), tree.leaves(b), strict=True):
        torch.testing.assert_close(x, y, **tolerance)


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["regions", "whole"])
def test_compiled_step_equals_eager_step(scope: str) -> None:
    batches = [batch(4, seed=i) for i in range(3)]
    eager, eager_history = run(4, batches, compile=False, clip_norm=1.0)
    compiled, compiled_history = run(4, batches, compile=True, clip_norm=1.0, compile_scope=scope)
    for e, c in zip(eager_history, compiled_history, strict=True):
        assert c["loss"] == pytest.approx(e["loss"], rel=1e-5)
        assert c["grad_norm"] == pytest.approx(e["grad_norm"], rel=1e-4)
    assert_trees_close(compiled.params, eager.params, atol=1e-5, rtol=1e-5)
    assert_trees_close(compiled.opt_state, eager.opt_state, atol=1e-6, rtol=1e-4)
    assert compiled.step.item() == 4


@pytest.mark.slow
def test_cuda_graph_mode_step_equals_eager_step() -> None:
    """ "reduce-overhead" marks the state static and clones graph outputs; on a CPU inductor
    replays no graphs, so this checks the bookkeeping, and a GPU run checks the replays."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batches = [{k: v.to(device) for k, v in batch(4, seed=i).items()} for i in range(3)]
    optimizer = AdamW()
    states = {}
    for mode in ("eager", "reduce-overhead"):
        state = to_device(init_state(gpt.init(CFG, seed=0), optimizer), device)
        step = make_train_step(
            LOSS, optimizer, CONSTANT, clip_norm=1.0, compile=mode != "eager",
            compile_mode="default" if mode == "eager" else mode,  # type: ignore[arg-type]
        )  # fmt: skip
        losses = []
        for i in range(4):
            state, metrics = step(state, batches[i % 3])
            losses.append(metrics["loss"].item())
        states[mode] = (state, losses)
    assert states["reduce-overhead"][1] == pytest.approx(states["eager"][1], rel=1e-5)
    assert_trees_close(
        states["reduce-overhead"][0].params, states["eager"][0].params, atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("accum", [2, 4])
def test_accumulation_equals_one_big_batch(accum: int) -> None:
    big = [batch(8, seed=i) for i in range(3)]
    # SGD keeps the comparison about gradients: Adam's first steps divide by |g| and turn
    # float rounding in near-zero gradients into full-size updates.
    one, one_history = run(3, big, compile=False, optimizer=SGD_)
    micro, micro_history = run(3, big, compile=False, accum_steps=accum, optimizer=SGD_)
    assert_trees_close(micro.params, one.params, atol=1e-6, rtol=0.0)
    for a, b in zip(one_history, micro_history, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)
        assert b["weight"] == a["weight"] == 8 * 16


def test_accumulation_weights_micro_batches_by_their_tokens() -> None:
    data = batch(4)
    data["targets"][:2, 4:] = -1  # the first micro-batch has fewer tokens
    one, _ = run(1, [data], compile=False, optimizer=SGD_)
    two, history = run(1, [data], compile=False, accum_steps=2, optimizer=SGD_)
    assert history[0]["weight"] == 2 * 4 + 2 * 16
    assert_trees_close(two.params, one.params, atol=1e-6, rtol=0.0)


def sgd_delta(clip_norm: float | None) -> tuple[torch.Tensor, float]:
    """The update of plain SGD with lr 1 is minus the (clipped) gradient."""
    params = gpt.init(CFG, seed=0)
    before = [p.clone() for p in tree.leaves(params)]
    state, history = run(
        1,
        [batch(4)],
        compile=False,
        clip_norm=clip_norm,
        optimizer=SGD(momentum=0.0),
        schedule=Schedule(kind="constant", peak_lr=1.0),
    )
    delta = torch.cat(
        [(b - a.detach()).flatten() for a, b in zip(tree.leaves(state.params), before, strict=True)]
    )
    return delta, history[0]["grad_norm"]


def test_clipping_bounds_the_norm_and_reports_the_norm_before() -> None:
    unclipped, norm = sgd_delta(None)
    assert unclipped.norm().item() == pytest.approx(norm, rel=1e-5)
    clipped, reported = sgd_delta(norm / 4)
    assert reported == pytest.approx(norm, rel=1e-6)
    assert clipped.norm().item() <= norm / 4 * (1 + 1e-5)
    torch.testing.assert_close(clipped, unclipped / 4, atol=1e-6, rtol=1e-4)
    untouched, _ = sgd_delta(norm * 10)
    torch.testing.assert_close(untouched, unclipped, atol=0.0, rtol=0.0)


def poisoned_loss(params, batch, *, rng=None):
    """A linear model whose loss overflows when batch["poison"] is set."""
    value = ((batch["inputs"].float() @ params["w"]) ** 2).mean() * (
        1.0 + batch["poison"].max() * 1e36
    )
    return value, {"weight": torch.tensor(batch["inputs"].shape[0])}


@pytest.mark.parametrize("sharded", [False, True], ids=["replicated", "sharded"])
def test_fp16_overflow_skips_the_update_and_halves_the_scale(sharded: bool) -> None:
    """Also with the optimizer state sharded (one rank): the skip follows the global norm."""
    optimizer = AdamW()
    # A small initial scale: fp16 gradients of this toy overflow at the default 2**16.
    state = init_state({"w": torch.randn(4, 2)}, optimizer, init_loss_scale=256.0)
    shards = OptimizerShards(state.params, 0, 1) if sharded else None
    if shards is not None:
        state = shards.shard_state(state)
    step = make_train_step(
        poisoned_loss, optimizer, CONSTANT, precision="fp16", compile=False, growth_interval=2,
        shards=shards,
    )  # fmt: skip
    clean = {"inputs": torch.randn(3, 4), "poison": torch.zeros(3)}
    poisoned = {"inputs": torch.randn(3, 4), "poison": torch.ones(3)}
    before = state.params["w"].detach().clone()
    moments = [m.clone() for m in tree.leaves(state.opt_state)]
    state, metrics = step(state, poisoned)
    assert metrics["skipped"].item() == 1 and not torch.isfinite(metrics["grad_norm"])
    assert torch.equal(state.params["w"], before)
    assert all(
        torch.equal(a, b) for a, b in zip(tree.leaves(state.opt_state), moments, strict=True)
    )
    assert state.loss_scale["scale"].item() == 128.0
    state, metrics = step(state, clean)
    assert metrics["skipped"].item() == 0 and not torch.equal(state.params["w"], before)
    state, _ = step(state, clean)  # a second good step: growth_interval reached
    assert state.loss_scale["scale"].item() == 256.0
    assert state.step.item() == 3


def test_bf16_trains_with_fp32_master_params() -> None:
    state, history = run(
        30,
        [batch(4)],
        compile=False,
        precision="bf16",
        schedule=Schedule(kind="constant", peak_lr=1e-2),
    )
    assert all(p.dtype == torch.float32 for p in tree.leaves(state.params))
    assert history[-1]["loss"] < history[0]["loss"] - 1.0


def test_same_seed_gives_bit_identical_params() -> None:
    cfg = CFG.model_copy(update={"dropout": 0.1})
    batches = [batch(4, seed=i) for i in range(2)]
    a, _ = run(5, batches, cfg=cfg, compile=False)
    b, _ = run(5, batches, cfg=cfg, compile=False)
    c, _ = run(5, batches, cfg=cfg, compile=False, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(tree.leaves(a), tree.leaves(b), strict=True))
    assert not torch.equal(a.params["tok"]["embedding"], c.params["tok"]["embedding"])


def test_a_tiny_model_overfits_a_tiny_batch() -> None:
    _, history = run(
        150,
        [batch(2)],
        compile=False,
        schedule=Schedule(kind="constant", peak_lr=1e-2),
        optimizer=AdamW(weight_decay=0.0),
    )
    assert history[0]["loss"] > 3.0
    assert history[-1]["loss"] < 0.1


def test_remat_step_matches_plain_step() -> None:
    batches = [batch(4, seed=i) for i in range(2)]
    plain, _ = run(3, batches, compile=False)
    remat, _ = run(3, batches, compile=False, cfg=CFG.model_copy(update={"remat": True}))
    assert_trees_close(remat.params, plain.params, atol=1e-6, rtol=1e-6)


def test_bad_step_options_are_refused() -> None:
    with pytest.raises(ValueError, match="accum_steps must be >= 1"):
        make_train_step(LOSS, AdamW(), CONSTANT, accum_steps=0)
    with pytest.raises(ValueError, match="precision must be fp32, bf16 or fp16"):
        make_train_step(LOSS, AdamW(), CONSTANT, precision="fp8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clip_norm must be positive"):
        make_train_step(LOSS, AdamW(), CONSTANT, clip_norm=0.0)
    with pytest.raises(ValueError, match="compile_mode must be one of"):
        make_train_step(LOSS, AdamW(), CONSTANT, compile_mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compile_scope must be one of"):
        make_train_step(LOSS, AdamW(), CONSTANT, compile_scope="some")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="replays the whole step as CUDA graphs"):
        make_train_step(
            LOSS, AdamW(), CONSTANT, compile_mode="reduce-overhead", compile_scope="regions"
        )
    with pytest.raises(ValueError, match="replays CUDA graphs, which needs accum_steps=1"):
        make_train_step(LOSS, AdamW(), CONSTANT, compile_mode="reduce-overhead", accum_steps=2)
    step = make_train_step(LOSS, AdamW(), CONSTANT, accum_steps=3, compile=False)
    with pytest.raises(ValueError, match="batch size 4 is not divisible by accum_steps=3"):
        step(init_state(gpt.init(CFG, seed=0), AdamW()), batch(4))


def test_any_batch_keys_and_the_loss_weight_normalise_the_step() -> None:
    """A regression batch {"x", "y"}: the step splits every key, and accumulation weighs each
    micro-batch by the weight its loss returns, so 2 micro-batches equal 1 big batch."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randn(8)
    weights = torch.tensor([1.0, 1, 1, 1, 3, 3, 3, 3])

    def loss(params: dict, micro: dict, *, rng: torch.Tensor | None) -> tuple:
        err = (micro["x"] @ params["w"] - micro["y"]) ** 2 * micro["w"]
        weight = micro["w"].sum()
        return err.sum() / weight, {"weight": weight}

    def final(accum: int) -> torch.Tensor:
        state = init_state({"w": torch.zeros(3)}, SGD_, seed=0)
        step = make_train_step(loss, SGD_, CONSTANT, accum_steps=accum, compile=False)
        for _ in range(3):
            state, metrics = step(state, {"x": x, "y": y, "w": weights})
        assert float(metrics["weight"]) == 16.0
        assert set(metrics) == {"loss", "lr", "grad_norm", "weight"}  # fp32: no loss scale
        return state.params["w"]

    torch.testing.assert_close(final(2), final(1))


def test_params_record_no_graph_outside_the_step() -> None:
    state, _ = run(1, [batch(2)], compile=False)
    assert not any(p.requires_grad for p in tree.leaves(state.params))
    logits = gpt.apply(state.params, batch(2)["inputs"], CFG)
    assert logits.grad_fn is None and not logits.requires_grad


def test_empty_batch_is_refused() -> None:
    state = init_state(gpt.init(CFG, seed=0), SGD_)
    step = make_train_step(LOSS, SGD_, CONSTANT, compile=False)
    with pytest.raises(ValueError, match="the batch is empty"):
        step(state, {})


def test_frozen_params_leave_the_update_of_the_others_unchanged() -> None:
    """Without clipping, a param's first AdamW update depends on its own gradient only, which
    freezing others does not change: the trained leaves match a full step's, bit for bit."""
    from craft.optim.masks import trainable_names

    names = trainable_names(gpt.init(CFG, seed=0), ["blocks.1.*", "tok.*"])
    assert names is not None
    full, _ = run(1, [batch(4)], compile=False)
    optimizer = AdamW()
    state = init_state(gpt.init(CFG, seed=0), optimizer, trainable=names)
    step = make_train_step(LOSS, optimizer, CONSTANT, compile=False, trainable=names)
    state, _ = step(state, batch(4))
    initial = tree.to_dotted(gpt.init(CFG, seed=0))
    for name, value in tree.to_dotted(state.params).items():
        expected = tree.to_dotted(full.params)[name] if name in names else initial[name]
        assert torch.equal(value, expected), name


def test_sharded_optimizer_state_refuses_frozen_params() -> None:
    shards = OptimizerShards(gpt.init(CFG, seed=0), 0, 1)
    with pytest.raises(ValueError, match="frozen params"):
        make_train_step(LOSS, AdamW(), CONSTANT, shards=shards, rank=0, trainable=["ln_f.scale"])
