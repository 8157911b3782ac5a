"""SGD with momentum (and Nesterov), the same update as `torch.optim.SGD`, in place."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from craft import tree
from craft.config import configurable
from craft.optim.adamw import OptState
from craft.tree import Params


@configurable
class SGD(BaseModel):
    """SGD; `weight_decay` is added to the gradient (L2), as torch.optim.SGD does."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)

    def init(self, params: Params) -> OptState:
        return {"momentum": tree.zeros_like(params)}

    def update(
        self, grads: Params, state: OptState, params: Params, *, lr: torch.Tensor | float
    ) -> tuple[Params, OptState]:
        """One step; `params` and `state` are updated in place and returned."""
        p = tree.leaves(params)
        g: list[torch.Tensor] | tuple[torch.Tensor, ...] = tree.leaves(grads)
        lr = torch.as_tensor(lr, dtype=torch.float32)
        if self.weight_decay:
            g = torch._foreach_add(g, p, alpha=self.weight_decay)
        if self.momentum:
            buffers = tree.leaves(state["momentum"])
            torch._foreach_mul_(buffers, self.momentum)
            torch._foreach_add_(buffers, g)
            g = torch._foreach_add(g, buffers, alpha=self.momentum) if self.nesterov else buffers
        updates = torch._foreach_mul(g, lr)
        torch._foreach_sub_(p, updates)
        return params, state
