"""The training state: one pytree holding everything a step reads and writes."""

from __future__ import annotations

from typing import NamedTuple

import torch

from craft import tree
from craft.nn.random import key
from craft.optim import Optimizer, OptState
from craft.tree import Params


class TrainState(NamedTuple):
    """params (fp32 masters), opt_state, step (int64), rng (a key), loss_scale (fp16 only)."""

    params: Params
    opt_state: OptState
    step: torch.Tensor
    rng: torch.Tensor
    loss_scale: dict[str, torch.Tensor]


def init_state(
    params: Params, optimizer: Optimizer, *, seed: int = 0, init_loss_scale: float = 2.0**16
) -> TrainState:
    """A fresh state around `params` (made fp32; they require gradients only inside the
    step, so code outside it records no autograd graph)."""
    params = tree.tree_map(lambda p: p.detach().float(), params)
    return TrainState(
        params=params,
        opt_state=optimizer.init(params),
        step=torch.zeros((), dtype=torch.int64),
        rng=key(seed),
        loss_scale={
            "scale": torch.tensor(init_loss_scale, dtype=torch.float32),
            "good_steps": torch.zeros((), dtype=torch.int64),
        },
    )


def to_device(state: TrainState, device: torch.device | str) -> TrainState:
    """The same state on another device."""
    return TrainState(*tree.tree_map(lambda x: x.detach().to(device), tuple(state)))
