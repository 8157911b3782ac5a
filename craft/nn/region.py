"""Compile regions: a model marks its repeated block, and the train step compiles that block
once and reuses it for every layer (regional compilation) instead of compiling the whole
forward as one graph.

A region is an ordinary function everywhere else: called eagerly, or traced inline when the
whole forward is compiled. Only inside `compiled_regions(options)` does a call go through
`torch.compile` (one compiled function per region and set of options; the layers' params
are inputs, so every layer reuses the graph its shapes compiled).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])
Options = tuple[tuple[str, Any], ...]
_OPTIONS: ContextVar[Options | None] = ContextVar("region_options", default=None)


def region(fn: F) -> F:
    """Mark `fn` (a pure function of its tensors; params are arguments) as a compile region."""
    compiled: dict[Options, Callable[..., Any]] = {}

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        # Inside a compiled forward the region is traced inline like any function.
        if torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        options = _OPTIONS.get()
        if options is None:
            return fn(*args, **kwargs)
        if options not in compiled:
            compiled[options] = torch.compile(fn, dynamic=False, options=dict(options) or None)
        return compiled[options](*args, **kwargs)

    return call  # type: ignore[return-value]


@contextlib.contextmanager
def compiled_regions(options: dict[str, Any] | None = None) -> Iterator[None]:
    """Within the block, regions run compiled with these inductor `options`."""
    token = _OPTIONS.set(tuple(sorted((options or {}).items())))
    try:
        yield
    finally:
        _OPTIONS.reset(token)
