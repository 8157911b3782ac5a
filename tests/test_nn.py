"""Pure layers against torch's own modules, and explicit-key randomness."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from craft import nn

shapes = st.tuples(st.integers(1, 3), st.integers(1, 9), st.sampled_from([2, 4, 8]))


@settings(max_examples=30, deadline=None)
@given(shapes, st.booleans())
def test_linear_and_norms_match_torch(shape: tuple[int, int, int], bias: bool) -> None:
    b, t, d = shape
    g = torch.Generator().manual_seed(b * 100 + t)
    x = torch.randn(b, t, d, generator=g)
    lin = nn.init_linear(d, 3, g, bias=bias)
    module = torch.nn.Linear(d, 3, bias=bias)
    with torch.no_grad():
        module.weight.copy_(lin["w"])
        if bias:
            module.bias.copy_(lin["b"])
    torch.testing.assert_close(nn.linear(lin, x), module(x))
    ln = nn.init_layer_norm(d, bias=bias)
    torch.testing.assert_close(nn.layer_norm(ln, x), torch.nn.LayerNorm(d, bias=bias)(x))
    torch.testing.assert_close(
        nn.rms_norm(nn.init_rms_norm(d), x), torch.nn.RMSNorm(d, eps=1e-6)(x)
    )


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(1, 12), st.sampled_from([1, 2, 4]))
def test_attention_is_causal_and_matches_explicit_softmax(b: int, t: int, heads: int) -> None:
    d = 8
    g = torch.Generator().manual_seed(t)
    params = nn.init_attention(d, g, bias=True, out_std=0.02)
    x = torch.randn(b, t, d, generator=g)
    y = nn.causal_self_attention(params, x, heads)
    q, k, v = nn.linear(params["qkv"], x).split(d, dim=-1)
    q, k, v = (z.view(b, t, heads, d // heads).transpose(1, 2) for z in (q, k, v))
    scores = q @ k.transpose(-1, -2) / (d // heads) ** 0.5
    scores = scores.masked_fill(torch.ones(t, t).triu(1).bool(), float("-inf"))
    expected = nn.linear(params["proj"], (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d))
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    # Changing a later token never changes earlier outputs.
    x2 = x.clone()
    x2[:, -1] += 1.0
    torch.testing.assert_close(nn.causal_self_attention(params, x2, heads)[:, :-1], y[:, :-1])


def test_rotary_preserves_norms_and_relative_positions() -> None:
    cos, sin = nn.rotary_tables(8, 16)
    x = torch.randn(1, 1, 16, 8)
    rotated = nn.apply_rotary(x, cos, sin)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))
    q = torch.randn(8).expand(1, 1, 16, 8)
    r = nn.apply_rotary(q, cos, sin)[0, 0]
    # <R_i q, R_j q> depends only on i - j.
    torch.testing.assert_close(r[3] @ r[1], r[10] @ r[8], atol=1e-5, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31), st.integers(0, 1000), st.floats(0.05, 0.9))
def test_dropout_is_a_pure_function_of_its_key(seed: int, salt: int, rate: float) -> None:
    x = torch.ones(64, 64)
    k = nn.fold_in(nn.key(seed), salt)
    a, b = nn.dropout(x, rate, k), nn.dropout(x, rate, k)
    assert torch.equal(a, b)
    assert not torch.equal(a, nn.dropout(x, rate, nn.fold_in(k, 1)))
    kept = (a != 0).float().mean().item()
    assert abs(kept - (1 - rate)) < 0.05
    assert torch.allclose(a[a != 0], torch.tensor(1 / (1 - rate)))
    assert torch.equal(nn.dropout(x, rate, None), x)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 6), st.integers(0, 6))
def test_per_row_keys_make_each_row_independent_of_its_batch(
    seed: int, rows: int, cut: int
) -> None:
    """With one key per row, a row's numbers depend on its key alone: a batch cut in two gives
    the same numbers as the whole (data parallel and accumulation rely on it)."""
    keys = nn.fold_in(nn.key(seed), torch.arange(rows))
    whole = nn.uniform(keys, (rows, 3, 5))
    cut = min(cut, rows)
    parts = [nn.uniform(keys[:cut], (cut, 3, 5)), nn.uniform(keys[cut:], (rows - cut, 3, 5))]
    assert torch.equal(torch.cat(parts), whole)
    assert torch.equal(whole[0], nn.uniform(keys[0], (3, 5)))  # a row = a 0-d key on its shape


def test_keys_that_do_not_fit_the_shape_are_refused() -> None:
    with pytest.raises(ValueError, match=r"keys of shape \(3,\) do not fit a tensor of shape"):
        nn.uniform(torch.zeros(3, dtype=torch.int64), (4, 2))
    with pytest.raises(ValueError, match=r"keys of shape \(2, 2\)"):
        nn.uniform(torch.zeros(2, 2, dtype=torch.int64), (2, 2))


def test_uniform_is_uniform_and_compiles_to_the_same_numbers() -> None:
    k = nn.key(7)
    u = nn.uniform(k, (100_000,))
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01
    assert abs(torch.histc(u, bins=10).std().item() / 10_000) < 0.03
    assert torch.equal(
        torch.compile(nn.uniform, fullgraph=True, dynamic=False)(k, (1000,)), u[:1000]
    )


def test_mlp_shape_and_gelu() -> None:
    g = torch.Generator().manual_seed(0)
    params = nn.init_mlp(4, 16, g, bias=True, out_std=0.02)
    x = torch.randn(2, 3, 4)
    expected = F.linear(
        F.gelu(F.linear(x, params["fc"]["w"], params["fc"]["b"]), approximate="tanh"),
        params["proj"]["w"],
        params["proj"]["b"],
    )
    torch.testing.assert_close(nn.mlp(params, x), expected)
