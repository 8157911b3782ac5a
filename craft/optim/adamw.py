"""AdamW with decoupled weight decay, as a pure-looking function over params trees.

`update` works in place on the params and state it is given (they are consumed, as in the
train step) with PyTorch's fused kernel, or `_foreach` kernels under torch.compile; `lr` is a
tensor so a schedule never recompiles the step.
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
_DECAYS: dict[Any, list[bool]] = {}  # decay_mask per tree structure and decay setting


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
        """One step; `params` and `state` are updated in place and returned.

        Run eagerly, it is PyTorch's fused multi-tensor AdamW kernel (one pass over each
        tensor, no graph to compile); traced by torch.compile, `_foreach` ops that inductor
        fuses. Both compute the same update."""
        p, structure = tree.flatten(params)
        g = tree.leaves(grads)
        mu, nu = tree.leaves(state["mu"]), tree.leaves(state["nu"])
        step = state["step"]
        step.add_(1)
        lr = torch.as_tensor(lr, dtype=torch.float32)
        decays = self._decays(params, p, structure)
        if not torch.compiler.is_compiling() and _fusable(p, g, mu, nu, step):
            for on in (True, False):
                pick = [i for i, decay in enumerate(decays) if decay == on]
                if pick:
                    torch._fused_adamw_(
                        [p[i] for i in pick], [g[i] for i in pick], [mu[i] for i in pick],
                        [nu[i] for i in pick], [], [step] * len(pick), lr=lr.to(step.device),
                        beta1=self.beta1, beta2=self.beta2, eps=self.eps, amsgrad=False,
                        weight_decay=self.weight_decay if on else 0.0, maximize=False,
                    )  # fmt: skip
            return params, state
        if self.weight_decay:
            decayed = [leaf for leaf, on in zip(p, decays, strict=True) if on]
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

    def _decays(self, params: Params, leaves: list[torch.Tensor], structure: Any) -> list[bool]:
        # Matching names costs 0.5 ms a step at 76 leaves: once per tree and setting.
        key = (
            structure, tuple(leaf.ndim for leaf in leaves), self.decay_vectors,
            self.decay_embeddings, tuple(self.embeddings),
        )  # fmt: skip
        if key not in _DECAYS:
            _DECAYS[key] = decay_mask(params, self)
        return _DECAYS[key]


def _fusable(*groups: Any) -> bool:
    """Can PyTorch's fused AdamW kernel take these: floating tensors of one dtype, on one CPU or
    CUDA device (the step tensor is float32 there too)?"""
    step = groups[-1]
    tensors = [t for group in groups[:-1] for t in group]
    first = tensors[0] if tensors else step
    return (
        first.device.type in ("cpu", "cuda")
        and first.dtype.is_floating_point
        and step.dtype == torch.float32
        and step.device == first.device
        and all(t.dtype == first.dtype and t.device == first.device for t in tensors)
    )


def decay_mask(params: Params, opt: AdamW) -> list[bool]:
    """Per leaf, in `tree.leaves` order: does weight decay apply? By role, not by name:
    matrices always, vectors if `decay_vectors`, embedding tables if `decay_embeddings`."""
    decays = {"matrix": True, "vector": opt.decay_vectors, "embedding": opt.decay_embeddings}
    return [decays[role] for role in roles(params, opt.embeddings).values()]
