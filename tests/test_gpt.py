"""The GPT: same math as a reference nn.Module, sane init, KV-cache decoding, configs."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from benchmarks.baseline_gpt import BaselineGPT, load_craft_params
from craft import tree
from craft.models import gpt
from craft.nn import fold_in, key

SMALL = gpt.GPTConfig(vocab_size=61, block_size=32, n_layer=2, n_head=4, n_embd=32)


def tokens(b: int, t: int, vocab: int = 61, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bias", [True, False])
def test_apply_matches_the_reference_module(bias: bool) -> None:
    cfg = SMALL.model_copy(update={"bias": bias})
    params = gpt.init(cfg, seed=3)
    # Perturb norms and biases so a swapped or skipped parameter cannot go unnoticed.
    params = tree.tree_map(lambda p: p + 0.01 * torch.randn_like(p) if p.ndim == 1 else p, params)
    module = load_craft_params(BaselineGPT(cfg), params)
    x, y = tokens(3, 20), tokens(3, 20, seed=1)
    torch.testing.assert_close(gpt.apply(params, x, cfg), module(x), atol=2e-5, rtol=1e-5)
    loss, aux = gpt.loss(params, {"inputs": x, "targets": y}, cfg)
    torch.testing.assert_close(loss, module(x, y), atol=2e-6, rtol=1e-6)
    assert aux["weight"] == 60


def test_fresh_model_loss_is_about_ln_vocab() -> None:
    cfg = SMALL.model_copy(update={"vocab_size": 500, "tie_embeddings": False})
    loss, _ = gpt.loss(
        gpt.init(cfg, seed=0), {"inputs": tokens(8, 32, 500), "targets": tokens(8, 32, 500, 1)}, cfg
    )
    assert abs(loss.item() - math.log(500)) < 0.05


def test_ignored_targets_do_not_count() -> None:
    params = gpt.init(SMALL, seed=0)
    x, y = tokens(2, 10), tokens(2, 10, seed=1)
    masked = y.clone()
    masked[:, 5:] = -1
    loss_masked, aux = gpt.loss(params, {"inputs": x, "targets": masked}, SMALL)
    logits = gpt.apply(params, x, SMALL)[:, :5]
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 61), y[:, :5].reshape(-1))
    torch.testing.assert_close(loss_masked, expected)
    assert aux["weight"] == 10


@settings(max_examples=12, deadline=None)
@given(
    positions=st.sampled_from(["learned", "rotary"]),
    norm=st.sampled_from(["layer", "rms"]),
    tie=st.booleans(),
    bias=st.booleans(),
    heads=st.sampled_from([1, 2, 4]),
    layers=st.integers(1, 3),
)
def test_param_count_and_kv_cache_decoding(
    positions: str, norm: str, tie: bool, bias: bool, heads: int, layers: int
) -> None:
    cfg = SMALL.model_copy(
        update={
            "positions": positions,
            "norm": norm,
            "tie_embeddings": tie,
            "bias": bias,
            "n_head": heads,
            "n_layer": layers,
        }
    )
    params = gpt.init(cfg, seed=1)
    assert gpt.param_count(cfg) == tree.count(params)
    x = tokens(2, 12)
    full = gpt.apply(params, x, cfg)
    cache = gpt.init_cache(cfg, batch=2)
    steps = [gpt.decode_step(params, cache, x[:, :5], torch.tensor(0), cfg)]
    steps += [
        gpt.decode_step(params, cache, x[:, t : t + 1], torch.tensor(t), cfg) for t in range(5, 12)
    ]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_dropout_follows_the_key_and_remat_changes_nothing() -> None:
    cfg = SMALL.model_copy(update={"dropout": 0.2})
    params = gpt.init(cfg, seed=0)
    x = tokens(2, 16)
    a, b = gpt.apply(params, x, cfg, rng=key(1)), gpt.apply(params, x, cfg, rng=key(1))
    assert torch.equal(a, b)
    assert not torch.allclose(a, gpt.apply(params, x, cfg, rng=key(2)))
    assert torch.equal(
        gpt.apply(params, x, cfg), gpt.apply(params, x, cfg.model_copy(update={"dropout": 0.0}))
    )
    remat = cfg.model_copy(update={"remat": True})
    torch.testing.assert_close(gpt.apply(params, x, remat, rng=key(1)), a)


def test_per_row_keys_give_each_row_the_same_dropout_in_any_batch() -> None:
    """The train step gives each row of the global batch its own key: a row's output must not
    depend on which rows share its batch (ranks, micro-batches)."""
    cfg = SMALL.model_copy(update={"dropout": 0.3})
    params = gpt.init(cfg, seed=0)
    x = tokens(4, 16)
    keys = fold_in(key(5), torch.arange(4))
    whole = gpt.apply(params, x, cfg, rng=keys)
    halves = [gpt.apply(params, x[i : i + 2], cfg, rng=keys[i : i + 2]) for i in (0, 2)]
    torch.testing.assert_close(torch.cat(halves), whole, atol=1e-6, rtol=0.0)
    assert not torch.allclose(whole, gpt.apply(params, x, cfg))  # dropout did act


def test_remat_gives_the_same_gradients() -> None:
    params = tree.tree_map(lambda p: p.requires_grad_(True), gpt.init(SMALL, seed=0))
    batch = {"inputs": tokens(2, 16), "targets": tokens(2, 16, seed=1)}
    plain = torch.autograd.grad(gpt.loss(params, batch, SMALL)[0], tree.leaves(params))
    remat_cfg = SMALL.model_copy(update={"remat": True})
    remat = torch.autograd.grad(gpt.loss(params, batch, remat_cfg)[0], tree.leaves(params))
    for a, b in zip(plain, remat, strict=True):
        torch.testing.assert_close(a, b)


def test_config_errors_are_clear() -> None:
    with pytest.raises(ValidationError, match="n_embd=30 must be a multiple of n_head=4"):
        gpt.GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValidationError, match="rotary positions need an even head size"):
        gpt.GPTConfig(n_embd=12, n_head=4, positions="rotary")
    with pytest.raises(ValueError, match="vocab_size is not set"):
        gpt.init(gpt.GPTConfig(), seed=0)
    with pytest.raises(ValueError, match="sequence length 40 exceeds block_size 32"):
        gpt.apply(gpt.init(SMALL, seed=0), tokens(1, 40), SMALL)


def test_same_seed_same_params() -> None:
    a, b, c = gpt.init(SMALL, seed=5), gpt.init(SMALL, seed=5), gpt.init(SMALL, seed=6)
    assert all(torch.equal(x, y) for x, y in zip(tree.leaves(a), tree.leaves(b), strict=True))
    assert not torch.equal(a["tok"]["embedding"], c["tok"]["embedding"])
