"""ZeRO-1 plans in one process: slices partition the params, views write through, the 1/N
memory law, and a sharded step over one rank equals the plain step (whole checkpoints included).

The collectives over several ranks are tested under torchrun in tests/test_distributed.py.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from craft import tree
from craft.errors import ConfigError
from craft.models import gpt
from craft.optim import SGD, AdamW, Schedule, decay_mask
from craft.train import init_state, make_train_step
from craft.train.sharded import OptimizerShards
from craft.train.state import TrainState
from craft.tree import Params

CFG = gpt.GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32)
LOSS = functools.partial(gpt.loss, cfg=CFG)
# Names that nest (dicts in dicts) and one embedding table, for up to four leaves.
LEAF_NAMES = ["tok.embedding", "blocks.0.w", "blocks.1.b", "head.w"]

shapes = st.lists(st.lists(st.integers(1, 7), min_size=1, max_size=3), min_size=1, max_size=4)


def distinct_params(leaf_shapes: list[list[int]]) -> Params:
    """A params tree whose elements, laid end to end, are 0, 1, 2, ... (all distinct)."""
    named, offset = {}, 0
    for name, shape in zip(LEAF_NAMES, leaf_shapes, strict=False):
        numel = math.prod(shape)
        named[name] = torch.arange(offset, offset + numel, dtype=torch.float32).reshape(shape)
        offset += numel
    return tree.from_dotted(named)


def flat(params: Params) -> torch.Tensor:
    """The leaves flattened and laid end to end."""
    return torch.cat([leaf.reshape(-1) for leaf in tree.leaves(params)])


def plan_is_valid(total: int, size: int) -> bool:
    """Every rank's slice of ceil(total / size) elements holds at least one element."""
    return (size - 1) * math.ceil(total / size) < total


def batch(step: int, size: int = 8) -> dict[str, torch.Tensor]:
    """A global batch of random tokens, different per step (as in tests/dist_worker.py)."""
    x = torch.randint(0, CFG.vocab(), (size, 17), generator=torch.Generator().manual_seed(step))
    return {"inputs": x[:, :-1].clone(), "targets": x[:, 1:].clone()}


@settings(max_examples=40, deadline=None)
@given(leaf_shapes=shapes, size=st.integers(1, 4))
def test_rank_slices_partition_the_params_as_views(leaf_shapes: list[list[int]], size: int) -> None:
    """The ranks' `own` slices, in rank order, are the flattened params exactly (no overlap, no
    gap), each at most `chunk` long, 2-d for pieces of matrices and 1-d for vectors, and views:
    writing into them writes into the params."""
    params = distinct_params(leaf_shapes)
    whole = flat(params).clone()
    if not plan_is_valid(whole.numel(), size):
        with pytest.raises(ConfigError, match="too few to shard"):
            OptimizerShards(params, 0, size)
        return
    plans = [OptimizerShards(params, rank, size) for rank in range(size)]
    slices = [plan.own(params) for plan in plans]
    assert torch.equal(torch.cat([flat(owned) for owned in slices]), whole)
    whole_ndim = {name: leaf.ndim for name, leaf in tree.to_dotted(params).items()}
    for plan, owned in zip(plans, slices, strict=True):
        assert 0 < plan.owned == tree.count(owned) <= plan.chunk
        for name, piece in tree.to_dotted(owned).items():
            assert piece.ndim == (2 if whole_ndim[name] >= 2 else 1), name
    for rank, owned in enumerate(slices):
        for piece in tree.leaves(owned):
            piece.fill_(-(rank + 1.0))
    labels = torch.cat(
        [torch.full((plan.owned,), -(rank + 1.0)) for rank, plan in enumerate(plans)]
    )
    assert torch.equal(flat(params), labels)


def test_too_few_params_or_a_bad_rank_are_refused() -> None:
    params = {"w": torch.zeros(3)}
    with pytest.raises(ConfigError, match="3 params are too few to shard over 4 ranks"):
        OptimizerShards(params, 0, 4)
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        OptimizerShards(params, 2, 2)


def test_a_non_contiguous_param_is_refused() -> None:
    """Its slice would be a copy, and the sharded update would silently never reach it."""
    params = {"w": torch.randn(2, 3).t(), "b": torch.zeros(3)}
    with pytest.raises(ConfigError, match=r"params must be contiguous .* not: \['w'\]"):
        OptimizerShards(params, 0, 1)


def test_a_plan_for_another_world_size_is_refused() -> None:
    """A plan for 2 ranks in a single process would update with half the gradient."""
    shards = OptimizerShards({"w": torch.zeros(4)}, 0, 2)
    with pytest.raises(ConfigError, match="sharded for 2 ranks, but 1 take part"):
        shards.scatter_sum([torch.ones(4)])


@settings(max_examples=25, deadline=None)
@given(leaf_shapes=shapes, size=st.integers(1, 4))
def test_split_shapes_a_flat_slice_like_own(leaf_shapes: list[list[int]], size: int) -> None:
    """`split` of a rank's flat slice (padded to `chunk`) gives views of it with the dotted names
    and shapes of `own`, its values laid in order."""
    params = distinct_params(leaf_shapes)
    if not plan_is_valid(tree.count(params), size):
        return
    for rank in range(size):
        plan = OptimizerShards(params, rank, size)
        local = torch.arange(plan.chunk, dtype=torch.float32) + 1000.0
        views = tree.to_dotted(plan.split(local))
        owned = tree.to_dotted(plan.own(params))
        assert {name: v.shape for name, v in views.items()} == {
            name: v.shape for name, v in owned.items()
        }
        assert torch.equal(flat(views), local[: plan.owned])
        local.zero_()
        assert all(not v.any() for v in views.values()), "split must give views, not copies"


def test_one_rank_collectives_are_the_identity() -> None:
    """With one rank and no process group: `scatter_sum` is the flattened gradients, `gather`
    rebuilds the whole leaves as fresh tensors, and `gather_params` leaves the params as they
    are."""
    params = gpt.init(CFG, seed=0)
    plan = OptimizerShards(params, 0, 1)
    leaves = tree.leaves(params)
    assert torch.equal(plan.scatter_sum(leaves), flat(params))
    gathered = plan.gather(plan.own(params))
    for whole, joined in zip(leaves, gathered, strict=True):
        assert torch.equal(joined, whole)
        assert joined.untyped_storage().data_ptr() != whole.untyped_storage().data_ptr()
    before = [leaf.clone() for leaf in leaves]
    plan.gather_params(params)
    assert all(torch.equal(a, b) for a, b in zip(tree.leaves(params), before, strict=True))


def train(
    optimizer: AdamW | SGD, steps: int, *, sharded: bool
) -> tuple[TrainState, OptimizerShards | None, list[float]]:
    """`steps` steps of the tiny GPT (2 micro-batches, clipping), sharded over one rank or not;
    also the grad norms."""
    state = init_state(gpt.init(CFG, seed=0), optimizer, seed=0)
    shards = OptimizerShards(state.params, 0, 1) if sharded else None
    if shards is not None:
        state = shards.shard_state(state)
    step = make_train_step(
        LOSS, optimizer, Schedule(kind="constant", peak_lr=1e-2),
        accum_steps=2, clip_norm=1.0, compile=False, shards=shards,
    )  # fmt: skip
    norms = []
    for i in range(steps):
        state, metrics = step(state, batch(i))
        norms.append(metrics["grad_norm"].item())
    return state, shards, norms


# eps 1e-5: a tiny eps makes Adam turn rounding noise in zero gradients into full-size steps.
OPTIMIZERS = [AdamW(eps=1e-5), SGD(momentum=0.9)]


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=["adamw", "sgd"])
def test_one_rank_sharded_step_equals_plain_step(optimizer: AdamW | SGD) -> None:
    """Sharding over one rank changes nothing: the same params and grad norms as the plain step,
    and `full_state` gives back the plain run's whole optimizer state (what checkpoints hold)."""
    plain, _, plain_norms = train(optimizer, 3, sharded=False)
    sharded, shards, sharded_norms = train(optimizer, 3, sharded=True)
    assert shards is not None
    assert sharded_norms == pytest.approx(plain_norms, rel=1e-5)
    for name, value in tree.to_dotted(plain.params).items():
        torch.testing.assert_close(tree.to_dotted(sharded.params)[name], value, atol=1e-6, rtol=0.0)
    full_state = shards.full_state(sharded).opt_state
    assert tree.flatten(full_state)[1] == tree.flatten(plain.opt_state)[1]  # lists stay lists
    full, expected = tree.to_dotted(full_state), tree.to_dotted(plain.opt_state)
    for name, value in expected.items():
        assert full[name].shape == value.shape, name
        torch.testing.assert_close(full[name], value, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "optimizer",
    [AdamW(), AdamW(decay_vectors=True), AdamW(decay_embeddings=True)],
    ids=["default", "vectors", "embeddings"],
)
def test_weight_decay_decisions_on_a_slice_match_the_whole_params(optimizer: AdamW) -> None:
    """AdamW decides decay per leaf by its name and dims; each piece of a rank's slice gets the
    decision of the leaf it was cut from."""
    params = gpt.init(CFG, seed=0)
    whole = dict(zip(tree.to_dotted(params), decay_mask(params, optimizer), strict=True))
    size = 3
    decisions = []
    for rank in (0, size - 1):
        owned = OptimizerShards(params, rank, size).own(params)
        on_slice = decay_mask(owned, optimizer)
        assert on_slice == [whole[name] for name in tree.to_dotted(owned)]
        decisions += on_slice
    assert any(decisions) and not all(decisions), "the slices should mix both decisions"


@pytest.mark.parametrize("size", [2, 4])
def test_sharded_adamw_state_is_one_nth_per_rank(size: int) -> None:
    """Each rank keeps at most ceil(P / N) elements per moment; over the ranks the moments hold
    each element once (2P in all), with the whole state's values; the step count stays whole.
    `init` builds the same slice fresh."""
    optimizer = AdamW()
    state = init_state(gpt.init(CFG, seed=0), optimizer)
    generator = torch.Generator().manual_seed(0)
    for moment in ("mu", "nu"):  # distinct values, to see where each element lands
        for leaf in tree.leaves(state.opt_state[moment]):
            leaf.copy_(torch.randn(leaf.shape, generator=generator))
    total = tree.count(state.params)
    per_rank = []
    for rank in range(size):
        shards = OptimizerShards(state.params, rank, size)
        opt_state = shards.shard_state(state).opt_state
        fresh = shards.init(optimizer, state.params)
        for moment in ("mu", "nu"):
            assert tree.count(opt_state[moment]) <= math.ceil(total / size)
            assert tree.flatten(fresh[moment])[1] == tree.flatten(opt_state[moment])[1]
        assert torch.equal(opt_state["step"], state.opt_state["step"])  # a scalar, kept whole
        per_rank.append(opt_state)
    assert sum(tree.count(s["mu"]) + tree.count(s["nu"]) for s in per_rank) == 2 * total
    for moment in ("mu", "nu"):
        joined = torch.cat([flat(s[moment]) for s in per_rank])
        assert torch.equal(joined, flat(state.opt_state[moment]))


def bigram_loss(
    params: Params, batch: dict[str, torch.Tensor], *, rng: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A bigram model (a matrix and a vector): the tiniest model that compiles quickly."""
    logits = params["w"][batch["inputs"]] + params["b"]
    loss = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=-1)
    return loss, {"weight": (batch["targets"] >= 0).sum()}


def sharded_bigram_run(steps: int, *, compile: bool) -> tuple[TrainState, list[int]]:
    """A sharded (one rank) AdamW run of the bigram model; also the number of graphs dynamo has
    compiled so far, after each step."""
    optimizer = AdamW(eps=1e-5)
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(CFG.vocab(), CFG.vocab(), generator=generator) * 0.02
    params = {"w": weights, "b": torch.zeros(CFG.vocab())}
    state = init_state(params, optimizer, seed=0)
    shards = OptimizerShards(state.params, 0, 1)
    state = shards.shard_state(state)
    step = make_train_step(
        bigram_loss, optimizer, Schedule(kind="constant", peak_lr=1e-2),
        accum_steps=2, clip_norm=1.0, compile=compile, shards=shards,
    )  # fmt: skip
    graphs = []
    for i in range(steps):
        state, _ = step(state, batch(i))
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    return state, graphs


@pytest.mark.slow
def test_compiled_sharded_step_compiles_once_and_equals_eager() -> None:
    """The compiled sharded step builds its graphs in the first step and reuses them in the
    next ones, and ends where the eager sharded step does."""
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled, graphs = sharded_bigram_run(3, compile=True)
    assert graphs[0] > before, "the first step compiled nothing"
    assert graphs[1:] == [graphs[0]] * 2, "the sharded step recompiled after its first step"
    eager, _ = sharded_bigram_run(3, compile=False)
    for name, value in tree.to_dotted(eager.params).items():
        torch.testing.assert_close(
            tree.to_dotted(compiled.params)[name], value, atol=1e-5, rtol=1e-5
        )
