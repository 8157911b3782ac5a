"""Regional compilation: a model's repeated block compiles once for every layer; the regional
step trains as the eager one does (remat too); the eager fused AdamW is the foreach update;
the vector-ISA setting yields to the user's; the settings' messages."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import craft.optim.adamw as adamw_module
from craft import tree
from craft.models import gpt
from craft.nn.region import compiled_regions, region
from craft.optim import AdamW, Schedule
from craft.train import init_state, make_train_step
from craft.train.config import TrainConfig
from craft.train.inductor import trust_cpu_vector_isa
from craft.train.state import TrainState
from craft.train.step import compile_scope_for

CFG = gpt.GPTConfig(vocab_size=40, block_size=16, n_layer=3, n_head=2, n_embd=32)


def batch(seed: int) -> dict[str, torch.Tensor]:
    x = torch.randint(0, 40, (4, 17), generator=torch.Generator().manual_seed(seed))
    return {"inputs": x[:, :-1], "targets": x[:, 1:]}


def test_a_region_is_a_plain_function_outside_compiled_regions() -> None:
    calls = []

    @region
    def double(x: torch.Tensor) -> torch.Tensor:
        calls.append(torch.compiler.is_compiling())
        return 2 * x

    assert torch.equal(double(torch.ones(3)), torch.full((3,), 2.0))
    assert calls == [False]  # ran eagerly, not traced


@pytest.mark.slow
def test_every_layer_reuses_the_one_compiled_block() -> None:
    params = gpt.init(CFG, seed=0)
    for leaf in tree.leaves(params):
        leaf.requires_grad_(True)
    torch._dynamo.reset()
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with compiled_regions():
        loss, _ = gpt.loss(params, batch(0), CFG)
        loss.backward()
        gpt.loss(params, batch(1), CFG)[0].backward()
    # Three layers, two steps: one graph (the block), traced once.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - before == 1
    eager = gpt.init(CFG, seed=0)
    for leaf in tree.leaves(eager):
        leaf.requires_grad_(True)
    expected, _ = gpt.loss(eager, batch(0), CFG)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def train(steps: int, cfg: gpt.GPTConfig, **options: object) -> tuple[TrainState, list[float]]:
    optimizer = AdamW(weight_decay=0.1)
    state = init_state(gpt.init(cfg, seed=0), optimizer)
    step = make_train_step(
        functools.partial(gpt.loss, cfg=cfg), optimizer, Schedule(kind="constant", peak_lr=1e-3),
        clip_norm=1.0, **options,  # type: ignore[arg-type]
    )  # fmt: skip
    losses = []
    for index in range(steps):
        state, metrics = step(state, batch(index))
        losses.append(metrics["loss"].item())
    return state, losses


@pytest.mark.slow
def test_regional_step_with_remat_and_dropout_matches_the_eager_step() -> None:
    cfg = CFG.model_copy(update={"remat": True, "dropout": 0.1})
    eager, eager_losses = train(3, cfg, compile=False)
    regional, regional_losses = train(3, cfg, compile=True, compile_scope="regions")
    assert regional_losses == pytest.approx(eager_losses, rel=1e-5)
    for a, b in zip(tree.leaves(regional.params), tree.leaves(eager.params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(
        st.lists(st.integers(1, 7), min_size=1, max_size=3).map(tuple), min_size=1, max_size=4
    ),
    steps=st.integers(1, 3),
    weight_decay=st.sampled_from([0.0, 0.1]),
    seed=st.integers(0, 2**16),
)
def test_fused_adamw_is_the_foreach_update(
    shapes: list[tuple[int, ...]], steps: int, weight_decay: float, seed: int
) -> None:
    """The law behind the regional update: PyTorch's fused kernel (eager) and Craft's
    `_foreach` formula (what torch.compile traces) give the same params and state."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = AdamW(weight_decay=weight_decay)

    def fresh() -> dict[str, torch.Tensor]:
        generator.manual_seed(seed)
        return {f"w{i}": torch.randn(shape, generator=generator) for i, shape in enumerate(shapes)}

    fused, foreach = fresh(), fresh()
    fused_state, foreach_state = optimizer.init(fused), optimizer.init(foreach)
    real_fusable = adamw_module._fusable
    for index in range(steps):
        generator.manual_seed(seed + index + 1)
        grads = {name: torch.randn(p.shape, generator=generator) for name, p in fused.items()}
        optimizer.update(grads, fused_state, fused, lr=torch.tensor(1e-2))
        adamw_module._fusable = lambda *groups: False  # type: ignore[assignment]
        try:
            optimizer.update(grads, foreach_state, foreach, lr=torch.tensor(1e-2))
        finally:
            adamw_module._fusable = real_fusable
    for a, b in zip(
        tree.leaves((fused, fused_state)), tree.leaves((foreach, foreach_state)), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_the_user_vector_isa_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    config = torch._inductor.config
    with config.patch({"cpp.vec_isa_ok": None}):  # restored after the test
        monkeypatch.setenv("TORCHINDUCTOR_VEC_ISA_OK", "0")
        trust_cpu_vector_isa()
        assert config.cpp.vec_isa_ok is None  # torch reads the variable itself
        monkeypatch.delenv("TORCHINDUCTOR_VEC_ISA_OK")
        trust_cpu_vector_isa()
        assert config.cpp.vec_isa_ok is True
        config.cpp.vec_isa_ok = False
        trust_cpu_vector_isa()
        assert config.cpp.vec_isa_ok is False  # set in code: kept


def test_auto_scope_is_regions_on_a_cpu_and_whole_elsewhere() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_scope_for(True, "auto", "default", cpu) == "regions"
    assert compile_scope_for(True, "auto", "default", cuda) == "whole"
    assert compile_scope_for(True, "auto", "reduce-overhead", cuda) == "whole"
    assert compile_scope_for(True, "whole", "default", cpu) == "whole"
    assert compile_scope_for(False, "regions", "default", cpu) == "off"


def test_cuda_graphs_with_regions_are_refused_with_the_fix() -> None:
    with pytest.raises(ValidationError, match="compile_scope='whole' or 'auto'"):
        TrainConfig(compile_mode="reduce-overhead", compile_scope="regions")
    with pytest.raises(ValidationError, match="compile_scope"):
        TrainConfig(compile_scope="blocks")  # type: ignore[arg-type]
