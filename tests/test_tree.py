"""Tree utilities: order, dotted names, norms and casts."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from craft import tree

names = st.text("abcdefgh_", min_size=1, max_size=4)
leaf = st.integers(0, 4).map(lambda n: torch.arange(n, dtype=torch.float32) - 1.5)
trees = st.recursive(
    leaf,
    lambda children: (
        st.dictionaries(names, children, min_size=1, max_size=3)
        | st.lists(children, min_size=1, max_size=3)
    ),
    max_leaves=10,
).filter(lambda t: isinstance(t, dict))


def same(a: object, b: object) -> bool:
    la, lb = tree.leaves(a), tree.leaves(b)
    return len(la) == len(lb) and all(torch.equal(x, y) for x, y in zip(la, lb, strict=True))


@settings(max_examples=100, deadline=None)
@given(trees)
def test_dotted_names_round_trip_and_keep_insertion_order(t: dict) -> None:
    flat = tree.to_dotted(t)
    assert same(list(flat.values()), tree.leaves(t))
    rebuilt = tree.from_dotted(flat, like=t)
    assert tree.flatten(rebuilt)[1] == tree.flatten(t)[1]
    assert same(rebuilt, t)


@settings(max_examples=100, deadline=None)
@given(trees)
def test_count_norm_cast_and_zeros(t: dict) -> None:
    flat = tree.leaves(t)
    assert tree.count(t) == sum(x.numel() for x in flat)
    expected = math.sqrt(sum(float((x.double() ** 2).sum()) for x in flat))
    assert tree.global_norm(t).item() == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert all(x.dtype == torch.bfloat16 for x in tree.leaves(tree.cast(t, torch.bfloat16)))
    assert all(not x.any() for x in tree.leaves(tree.zeros_like(t)))


def test_insertion_order_is_not_sorted() -> None:
    t = {"z": torch.zeros(1), "a": {"y": torch.ones(1), "b": torch.ones(2)}}
    assert list(tree.to_dotted(t)) == ["z", "a.y", "a.b"]


def test_lists_get_numeric_names_and_stay_lists() -> None:
    t = {"blocks": [{"w": torch.ones(1)}, {"w": torch.zeros(1)}]}
    assert list(tree.to_dotted(t)) == ["blocks.0.w", "blocks.1.w"]
    assert isinstance(tree.from_dotted(tree.to_dotted(t), like=t)["blocks"], list)
    assert tree.from_dotted({"a.b": 1, "a.c": 2}) == {"a": {"b": 1, "c": 2}}


def test_names_that_do_not_fit_are_named() -> None:
    t = {"a": torch.ones(1), "b": torch.ones(1)}
    with pytest.raises(KeyError, match=r"missing \['b'\], unexpected \['c'\]"):
        tree.from_dotted({"a": torch.ones(1), "c": torch.ones(1)}, like=t)
    with pytest.raises(ValueError, match=r"contains '\.'"):
        tree.to_dotted({"a.b": torch.ones(1)})


def test_integer_leaves_are_not_cast() -> None:
    t = {"step": torch.zeros((), dtype=torch.int64), "w": torch.ones(2)}
    cast = tree.cast(t, torch.float16)
    assert cast["step"].dtype == torch.int64 and cast["w"].dtype == torch.float16
