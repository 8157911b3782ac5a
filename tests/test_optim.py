"""Optimizers against torch.optim, and schedules."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from craft.optim import SGD, AdamW, Schedule, decay_mask


def make_params(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "tok": {"embedding": torch.randn(7, 4, generator=g)},
        "layer": {"w": torch.randn(5, 4, generator=g), "b": torch.randn(5, generator=g)},
        "norm": {"scale": torch.randn(4, generator=g)},
    }


def leaves(p: dict) -> list[torch.Tensor]:
    return [p["tok"]["embedding"], p["layer"]["w"], p["layer"]["b"], p["norm"]["scale"]]


def test_decay_mask_skips_vectors_and_embeddings_unless_asked() -> None:
    params = make_params(0)
    assert decay_mask(params, AdamW()) == [False, True, False, False]
    assert decay_mask(params, AdamW(decay_embeddings=True)) == [True, True, False, False]
    assert decay_mask(params, AdamW(decay_vectors=True)) == [False, True, True, True]


@settings(max_examples=8, deadline=None)
@given(
    beta2=st.sampled_from([0.95, 0.99, 0.999]),
    weight_decay=st.sampled_from([0.0, 0.1, 0.5]),
    lr=st.sampled_from([1e-3, 3e-2]),
)
def test_adamw_matches_torch_over_many_steps(beta2: float, weight_decay: float, lr: float) -> None:
    params = make_params(1)
    reference = [t.clone().requires_grad_(True) for t in leaves(params)]
    ours = AdamW(beta1=0.9, beta2=beta2, eps=1e-8, weight_decay=weight_decay)
    state = ours.init(params)
    torch_opt = torch.optim.AdamW(
        [
            {"params": [reference[1]], "weight_decay": weight_decay},
            {"params": [reference[0], reference[2], reference[3]], "weight_decay": 0.0},
        ],
        lr=lr, betas=(0.9, beta2), eps=1e-8, foreach=False,
    )  # fmt: skip
    g = torch.Generator().manual_seed(2)
    for _ in range(300):
        grads = [torch.randn(t.shape, generator=g) for t in reference]
        tree_grads = {
            "tok": {"embedding": grads[0]},
            "layer": {"w": grads[1], "b": grads[2]},
            "norm": {"scale": grads[3]},
        }
        ours.update(tree_grads, state, params, lr=torch.tensor(lr))
        for t, grad in zip(reference, grads, strict=True):
            t.grad = grad
        torch_opt.step()
    for mine, theirs in zip(leaves(params), reference, strict=True):
        torch.testing.assert_close(mine, theirs.detach(), atol=1e-5, rtol=1e-5)
    assert state["step"].item() == 300


@pytest.mark.parametrize(
    ("momentum", "nesterov", "wd"), [(0.0, False, 0.0), (0.9, False, 0.01), (0.9, True, 0.0)]
)
def test_sgd_matches_torch(momentum: float, nesterov: bool, wd: float) -> None:
    params = make_params(3)
    reference = [t.clone().requires_grad_(True) for t in leaves(params)]
    ours = SGD(momentum=momentum, nesterov=nesterov, weight_decay=wd)
    state = ours.init(params)
    torch_opt = torch.optim.SGD(
        reference, lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=wd
    )
    g = torch.Generator().manual_seed(4)
    for _ in range(100):
        grads = [torch.randn(t.shape, generator=g) for t in reference]
        tree_grads = {
            "tok": {"embedding": grads[0]},
            "layer": {"w": grads[1], "b": grads[2]},
            "norm": {"scale": grads[3]},
        }
        ours.update(tree_grads, state, params, lr=0.05)
        for t, grad in zip(reference, grads, strict=True):
            t.grad = grad
        torch_opt.step()
    for mine, theirs in zip(leaves(params), reference, strict=True):
        torch.testing.assert_close(mine, theirs.detach(), atol=1e-5, rtol=1e-5)


def test_warmup_cosine_shape() -> None:
    s = Schedule(
        kind="warmup_cosine", peak_lr=1e-3, final_lr=1e-4, warmup_steps=100, total_steps=2000
    )
    assert s(0).item() == pytest.approx(1e-5)
    assert s(99).item() == pytest.approx(1e-3)
    assert s(100).item() == pytest.approx(1e-3)
    assert s(1050).item() == pytest.approx(5.5e-4, rel=1e-4)
    assert s(2000).item() == pytest.approx(1e-4) and s(5000).item() == pytest.approx(1e-4)


def test_wsd_holds_then_decays_linearly() -> None:
    s = Schedule(
        kind="wsd", peak_lr=1.0, final_lr=0.0, warmup_steps=10, total_steps=100, decay_fraction=0.2
    )
    assert s(50).item() == pytest.approx(1.0) and s(80).item() == pytest.approx(1.0)
    assert s(90).item() == pytest.approx(0.5) and s(100).item() == pytest.approx(0.0)


@settings(max_examples=50, deadline=None)
@given(
    kind=st.sampled_from(["constant", "warmup_cosine", "wsd"]),
    warmup=st.integers(0, 50),
    total=st.integers(50, 500),
    step=st.integers(0, 600),
)
def test_schedules_stay_between_zero_and_peak(
    kind: str, warmup: int, total: int, step: int
) -> None:
    s = Schedule(kind=kind, peak_lr=2e-3, final_lr=1e-4, warmup_steps=warmup, total_steps=total)  # type: ignore[arg-type]
    lr = s(torch.tensor(step)).item()
    assert 0 < lr <= 2e-3 * (1 + 1e-6)
    if step >= total and kind != "constant":
        assert lr == pytest.approx(1e-4, rel=1e-5)


def test_warmup_longer_than_training_is_refused() -> None:
    with pytest.raises(ValueError, match="warmup_steps=300 exceeds total_steps=200"):
        Schedule(warmup_steps=300, total_steps=200)


def test_schedule_length_follows_the_run_unless_set() -> None:
    from craft.errors import ConfigError

    assert Schedule(kind="warmup_cosine", warmup_steps=10).for_run(5000).total_steps == 5000
    assert Schedule(total_steps=300, warmup_steps=10).for_run(5000).total_steps == 300
    with pytest.raises(ConfigError, match="warmup_steps = 100 exceeds the run's 30 steps"):
        Schedule(warmup_steps=100).for_run(30)
    decayed = Schedule(peak_lr=1.0, final_lr=0.0, warmup_steps=1).for_run(100)
    assert float(decayed(99)) < 1e-3  # ends at final_lr on the run's last step
    with pytest.raises(ValueError, match="call for_run"):
        Schedule(kind="wsd")(3)


NAME_PART = st.sampled_from(["tok", "wte", "h", "0", "1", "attn", "c_fc", "w", "weight", "b"])


@settings(max_examples=40, deadline=None)
@given(
    leaves=st.dictionaries(
        st.lists(NAME_PART, min_size=1, max_size=4).map(".".join),
        st.integers(0, 3),  # ndim
        min_size=1,
        max_size=8,
    ),
    decay_vectors=st.booleans(),
    decay_embeddings=st.booleans(),
)
def test_weight_decay_follows_the_role_not_the_name(
    leaves: dict[str, int], decay_vectors: bool, decay_embeddings: bool
) -> None:
    """Any tree: matrices decay, vectors if asked, embedding tables (named by patterns) if
    asked; a leaf's own name changes nothing else."""
    from craft import tree as trees

    # Names that are prefixes of others cannot be leaves of one tree.
    names = [n for n in leaves if not any(o.startswith(n + ".") for o in leaves)]
    flat = {n: torch.zeros((2,) * leaves[n]) for n in names}
    params = trees.from_dotted(flat)
    opt = AdamW(
        decay_vectors=decay_vectors, decay_embeddings=decay_embeddings, embeddings=["*wte.*"]
    )
    expected = [
        decay_embeddings
        if name.startswith("wte.") or ".wte." in name
        else (flat[name].ndim >= 2 or decay_vectors)
        for name in trees.to_dotted(params)
    ]
    assert decay_mask(params, opt) == expected


def test_embeddings_of_any_tree_are_named_by_patterns() -> None:
    """A module's names (`transformer.wte.weight`) are not Craft's (`tok.embedding`)."""
    params = {"transformer": {"wte": {"weight": torch.zeros(5, 3)}, "h": {"w": torch.zeros(3, 3)}}}
    assert decay_mask(params, AdamW()) == [True, True]  # by default, a matrix
    assert decay_mask(params, AdamW(embeddings=["*.wte.weight"])) == [False, True]


@settings(max_examples=300, deadline=None)
@given(
    name=st.text(alphabet="ab.1]!", max_size=8),
    pattern=st.text(alphabet="ab.1*?[]!", max_size=7),
)
def test_name_patterns_match_as_fnmatch(name: str, pattern: str) -> None:
    import fnmatch

    from craft.optim.masks import matches

    assert matches(name, pattern) == fnmatch.fnmatchcase(name, pattern)
