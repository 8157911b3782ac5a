"""AdamW with decoupled weight decay, as a pure-looking function over params trees.

`update` works in place on the params and state it is given (they are consumed, as in the
train step) with `_foreach` kernels; `lr` is a tensor so a schedule never recompiles the step.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from craft import tree
from craft.config import configurable
from craft.optim.masks import EMBEDDING_NAMES, roles
from craft.tree import Params

OptState = dict[str, Any]


@configurable
class AdamW(BaseModel):
    """AdamW. Weight decay follows a param's role: matrices decay; vectors (norm scales,
    biases) and embedding tables do not, unless asked."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    decay_vectors: bool = False
    """Also decay 1-d params (norm scales, biases)."""
    decay_embeddings: bool = False
    """Also decay embedding tables (the params `embeddings` names)."""
    embeddings: list[str] = list(EMBEDDING_NAMES)
    """fnmatch patterns of the dotted names that are embedding tables. Craft's layers call
    them `embedding`; a tree with other names (a module turned into params) lists its own,
    e.g. ['*.wte.weight', '*.wpe.weight']."""

    def init(self, params: Params) -> OptState:
        return {
            "step": torch.zeros((), dtype=torch.float32),
            "mu": tree.zeros_like(params),
            "nu": tree.zeros_like(params),
        }

    def update(
        self, grads: Params, state: OptState, params: Params, *, lr: torch.Tensor | float
    ) -> tuple[Params, OptState]:
        """One step; `params` and `state` are updated in place and returned."""
        p, g = tree.leaves(params), tree.leaves(grads)
        mu, nu = tree.leaves(state["mu"]), tree.leaves(state["nu"])
        step = state["step"]
        step.add_(1)
        lr = torch.as_tensor(lr, dtype=torch.float32)
        if self.weight_decay:
            decayed = [leaf for leaf, on in zip(p, decay_mask(params, self), strict=True) if on]
            if decayed:
                torch._foreach_mul_(decayed, 1.0 - lr * self.weight_decay)
        torch._foreach_lerp_(mu, g, 1.0 - self.beta1)
        torch._foreach_mul_(nu, self.beta2)
        torch._foreach_addcmul_(nu, g, g, value=1.0 - self.beta2)
        bias1 = 1.0 - self.beta1**step
        bias2 = 1.0 - self.beta2**step
        denom = torch._foreach_sqrt(nu)
        torch._foreach_div_(denom, bias2.sqrt())
        torch._foreach_add_(denom, self.eps)
        updates = torch._foreach_div(mu, denom)
        torch._foreach_mul_(updates, lr / bias1)
        torch._foreach_sub_(p, updates)
        return params, state


def decay_mask(params: Params, opt: AdamW) -> list[bool]:
    """Per leaf, in `tree.leaves` order: does weight decay apply? By role, not by name:
    matrices always, vectors if `decay_vectors`, embedding tables if `decay_embeddings`."""
    decays = {"matrix": True, "vector": opt.decay_vectors, "embedding": opt.decay_embeddings}
    return [decays[role] for role in roles(params, opt.embeddings).values()]
