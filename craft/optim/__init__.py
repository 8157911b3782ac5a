"""Functional optimizers (`init(params)`, `update(grads, state, params, *, lr)`) and schedules."""

from typing import Protocol

import torch

from craft.optim.adamw import AdamW, OptState, decay_mask
from craft.optim.schedules import Schedule
from craft.optim.sgd import SGD
from craft.tree import Params


class Optimizer(Protocol):
    """What `make_train_step` needs of an optimizer."""

    def init(self, params: Params) -> OptState: ...

    def update(
        self, grads: Params, state: OptState, params: Params, *, lr: torch.Tensor | float
    ) -> tuple[Params, OptState]: ...


__all__ = ["SGD", "AdamW", "OptState", "Optimizer", "Schedule", "decay_mask"]
