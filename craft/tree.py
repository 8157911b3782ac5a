"""Pytree helpers: the one wrapper over `torch.utils._pytree` in Craft.

A tree is nested dicts, lists and tuples with tensors at the leaves. Dict insertion order is
kept everywhere (raw optree would sort keys), so flattening is stable and checkpoint keys read in
model order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.utils._pytree as pytree

Tree = Any  # nested dict / list / tuple of tensors
Params = dict[str, Any]  # nested dict[str, Tensor | dict]


def tree_map(fn: Callable[..., Any], tree: Tree, *rest: Tree) -> Tree:
    """Apply `fn` to the leaves of `tree` (and the matching leaves of `rest`)."""
    return pytree.tree_map(fn, tree, *rest)


def leaves(tree: Tree) -> list[Any]:
    """The leaves in insertion order."""
    return pytree.tree_leaves(tree)


def flatten(tree: Tree) -> tuple[list[Any], Any]:
    """(leaves, structure); `unflatten(structure, leaves)` rebuilds the tree."""
    return pytree.tree_flatten(tree)


def unflatten(structure: Any, values: list[Any]) -> Tree:
    return pytree.tree_unflatten(values, structure)


def to_dotted(tree: Tree, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts and lists to `{"blocks.0.attn.qkv.w": leaf}`, in insertion order."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        items = [(str(k), v) for k, v in tree.items()]
    elif isinstance(tree, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(tree)]
    else:
        return {prefix: tree}
    for key, value in items:
        if "." in key:
            raise ValueError(f"tree key {key!r} contains '.', which dotted names use as separator")
        out.update(to_dotted(value, f"{prefix}.{key}" if prefix else key))
    return out


def from_dotted(flat: dict[str, Any], like: Tree | None = None) -> Tree:
    """Rebuild a tree from dotted names: shaped like `like` when given (lists stay lists; every
    name must be present and no other), else as nested dicts."""
    if like is not None:
        expected = list(to_dotted(like))
        missing = [name for name in expected if name not in flat]
        unexpected = [name for name in flat if name not in set(expected)]
        if missing or unexpected:
            raise KeyError(f"names do not fit the tree: missing {missing}, unexpected {unexpected}")
        return unflatten(flatten(like)[1], [flat[name] for name in expected])
    root: dict[str, Any] = {}
    for name, value in flat.items():
        node = root
        *parents, last = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"'{name}' conflicts with a leaf at '{part}'")
        if last in node:
            raise ValueError(f"duplicate name '{name}'")
        node[last] = value
    return root


def count(tree: Tree) -> int:
    """Total number of elements over all tensor leaves."""
    return sum(leaf.numel() for leaf in leaves(tree) if isinstance(leaf, torch.Tensor))


def cast(tree: Tree, dtype: torch.dtype) -> Tree:
    """Floating-point leaves cast to `dtype`; integer leaves unchanged."""
    return tree_map(lambda x: x.to(dtype) if torch.is_floating_point(x) else x, tree)


def zeros_like(tree: Tree) -> Tree:
    return tree_map(torch.zeros_like, tree)


def global_norm(tree: Tree) -> torch.Tensor:
    """The L2 norm of all leaves together, computed in fp32."""
    tensors = [leaf for leaf in leaves(tree) if leaf is not None]
    if not tensors:
        return torch.zeros(())
    norms = torch._foreach_norm([t.float() for t in tensors], 2.0)
    return torch.linalg.vector_norm(torch.stack(norms), 2.0)
