"""Evaluation over a split: the loss's sums added up batch by batch, named by the task."""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice
from typing import Any

import torch

from craft.tree import Params

LossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


@torch.no_grad()
def evaluate(
    task: Any,
    loss_fn: LossFn,
    params: Params,
    split: str,
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    max_batches: int | None = None,
) -> dict[str, float]:
    """The task's metrics over `split` (or its first `max_batches` batches).

    `loss_fn(params, batch, *, rng) -> (mean, {"weight": n, ...sums})`; the means are weighted
    back into sums (`loss_sum`), so the result is one mean over every unit of the split.
    """
    sums: dict[str, float] = {"loss_sum": 0.0, "weight": 0.0}
    for batch in islice(task.eval_batches(split, batch_size), max_batches):
        batch = {name: value.to(device, non_blocking=True) for name, value in batch.items()}
        loss, aux = loss_fn(params, batch, rng=None)
        weight = float(aux["weight"])
        sums["loss_sum"] += float(loss) * weight
        for name, value in aux.items():
            sums[name] = sums.get(name, 0.0) + float(value)
    summary: dict[str, float] = task.summarize(sums, split, whole=max_batches is None)
    return summary
