"""What trains and what decays: masks over a params tree by dotted name and by role.

Both work for any params tree (Craft's own models, an imported GPT-2, a module turned into
params), because they look at what a leaf is (its shape, or a name pattern the user gives),
never at one model's naming.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from craft import tree
from craft.errors import ConfigError
from craft.tree import Params

Role = Literal["matrix", "vector", "embedding"]

EMBEDDING_NAMES = ("embedding", "*.embedding")
"""Craft's layers name their tables `embedding` (`tok.embedding`, `pos.embedding`)."""


def matches(name: str, pattern: str) -> bool:
    """fnmatch on a dotted name: `*` (any run, dots included: 'blocks.1*' covers
    'blocks.10.mlp.fc.w'), `?`, `[seq]`, `[!seq]`.

    Plain string work, not `fnmatch` (which compiles a regex): the optimizer's weight-decay
    mask runs inside the compiled step, and torch.compile traces this but breaks on `re`.
    """
    # Iterative glob with one backtrack point: O(len(name) * len(pattern)) at worst.
    n = p = 0
    star_p, star_n = -1, 0
    while n < len(name):
        step = _one(pattern, p, name[n]) if p < len(pattern) else 0
        if step:
            n, p = n + 1, p + step
        elif p < len(pattern) and pattern[p] == "*":
            star_p, star_n, p = p, n, p + 1
        elif star_p >= 0:
            star_n += 1
            n, p = star_n, star_p + 1
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def _one(pattern: str, p: int, char: str) -> int:
    """How many pattern characters match `char` at `pattern[p]` (0: no match or a `*`)."""
    head = pattern[p]
    if head == "*":
        return 0
    if head == "?":
        return 1
    if head == "[":
        # As fnmatch: `!` negates, a `]` right after `[` or `[!` is a literal, and an
        # unclosed `[` is a literal.
        start = p + 1
        negate = start < len(pattern) and pattern[start] == "!"
        start += negate
        end = pattern.find(
            "]", start + 1 if start < len(pattern) and pattern[start] == "]" else start
        )
        if end > 0:
            body = pattern[start:end]
            hit = False
            i = 0
            while i < len(body):
                if i + 2 < len(body) and body[i + 1] == "-":
                    hit = hit or body[i] <= char <= body[i + 2]
                    i += 3
                else:
                    hit = hit or body[i] == char
                    i += 1
            return end - p + 1 if hit != negate else 0
    return 1 if head == char else 0


def role_of(name: str, leaf: torch.Tensor, embeddings: Sequence[str] = EMBEDDING_NAMES) -> Role:
    """A leaf's role: an embedding table if a pattern in `embeddings` names it, else a matrix
    (2 or more dims) or a vector (norm scales, biases, scalars)."""
    if any(matches(name, pattern) for pattern in embeddings):
        return "embedding"
    return "matrix" if leaf.ndim >= 2 else "vector"


def roles(params: Params, embeddings: Sequence[str] = EMBEDDING_NAMES) -> dict[str, Role]:
    """Every leaf's role, by dotted name, in `tree.leaves` order."""
    return {name: role_of(name, leaf, embeddings) for name, leaf in tree.to_dotted(params).items()}


def trainable_names(
    params: Params, patterns: Sequence[str] | None, *, what: str = "TrainConfig.trainable"
) -> tuple[str, ...] | None:
    """The dotted names that `patterns` select, in tree order; None when everything trains.

    A pattern that selects nothing is a config error naming it: it is a typo, or a pattern
    written for another model, and silently training less than asked is worse than stopping.
    """
    if patterns is None:
        return None
    names = list(tree.to_dotted(params))
    unmatched = [p for p in patterns if not any(matches(name, p) for name in names)]
    if unmatched:
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise ConfigError(
            f"{what}: {', '.join(repr(p) for p in unmatched)} matches no parameter; patterns "
            f"are fnmatch-style on dotted names such as {shown}"
        )
    selected = tuple(name for name in names if any(matches(name, p) for p in patterns))
    if not selected:
        raise ConfigError(f"{what} is empty: nothing would train (None trains everything)")
    return selected


def select(params: Params, names: Sequence[str] | None) -> Params:
    """The sub-tree of `params` holding the leaves `names` (the same tensors, not copies);
    all of `params` when `names` is None. Its dotted names are the leaves' own, so optimizer
    state built on it is named in checkpoints as the params it belongs to."""
    if names is None:
        return params
    flat = tree.to_dotted(params)
    return tree.from_dotted({name: flat[name] for name in names})
