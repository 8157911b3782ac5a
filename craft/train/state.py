"""The training state: one pytree holding everything a step reads and writes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from craft import tree
from craft.nn.random import key
from craft.optim import Optimizer, OptState
from craft.optim.masks import select
from craft.train.pruning import init_masks
from craft.tree import Params


class TrainState(NamedTuple):
    """params (fp32 masters), opt_state, step (int64), rng (a key), loss_scale (fp16 only),
    ema (the exponential moving average of the trained params; `{}` when it is off), masks
    (pruning: a boolean mask per pruned weight, under its name; `{}` when it is off)."""

    params: Params
    opt_state: OptState
    step: torch.Tensor
    rng: torch.Tensor
    loss_scale: dict[str, torch.Tensor]
    ema: Params
    masks: Params = {}  # noqa: RUF012 (a NamedTuple default, never mutated)


def init_state(
    params: Params,
    optimizer: Optimizer,
    *,
    seed: int = 0,
    init_loss_scale: float = 2.0**16,
    trainable: Sequence[str] | None = None,
    ema: bool = False,
    pruned: Sequence[str] = (),
) -> TrainState:
    """A fresh state around `params` (made fp32; they require gradients only inside the
    step, so code outside it records no autograd graph).

    `trainable`: the dotted names of the params that train (None: all). The optimizer state
    holds those only, under their own names (`opt_state.mu.blocks.5.mlp.fc.w`): frozen params
    cost no optimizer memory. Give the step the same names.

    `ema`: keep an exponential moving average of the trained params (a copy of them, fp32,
    under the same names: `ema.blocks.5.mlp.fc.w`); give the step an `ema_decay`.

    `pruned`: the dotted names of the weights pruned while training (`craft.train.pruning`):
    each gets an all-true mask (`masks.blocks.5.mlp.fc.w`), which the step applies after
    every update.
    """
    params = tree.tree_map(lambda p: p.detach().float(), params)
    return TrainState(
        params=params,
        opt_state=optimizer.init(select(params, trainable)),
        step=torch.zeros((), dtype=torch.int64),
        rng=key(seed),
        loss_scale={
            "scale": torch.tensor(init_loss_scale, dtype=torch.float32),
            "good_steps": torch.zeros((), dtype=torch.int64),
        },
        ema=tree.tree_map(torch.clone, select(params, trainable)) if ema else {},
        masks=init_masks(params, pruned) if pruned else {},
    )


def to_device(state: TrainState, device: torch.device | str) -> TrainState:
    """The same state on another device."""
    return TrainState(*tree.tree_map(lambda x: x.detach().to(device), tuple(state)))
