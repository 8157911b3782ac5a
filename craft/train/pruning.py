"""Magnitude pruning while training: masks in the state, a gradual cubic schedule.

The training state holds one boolean mask per pruned weight (`state.masks`, under the
weight's own dotted name); the step multiplies each weight by its mask after every optimizer
update, so a pruned weight stays zero. At the schedule's steps `Pruner.after_update` recomputes
the masks from the weights' magnitudes, each weight pruned to the schedule's sparsity (Zhu &
Gupta 2017: s_t = s_f (1 - (1 - (t - t0) / (t1 - t0))^3) from step t0 to t1, every `every`
steps). The masks live in checkpoints (`masks.*`), so a resumed run keeps them and goes on
with the schedule from its step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from craft import tree
from craft.config import configurable
from craft.errors import ConfigError
from craft.optim.masks import matches
from craft.tree import Params

MASKS = "masks"
"""Where the state (and a checkpoint) holds the masks, under the weights' own dotted names."""


@configurable
class PruneConfig(BaseModel):
    """Gradual magnitude pruning of the weights during training (off at sparsity 0)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    sparsity: float = Field(0.0, ge=0.0, lt=1.0)
    """The final share of each pruned weight's entries set to zero (0: no pruning)."""
    start_step: int = Field(0, ge=0)
    """The step at which pruning starts (t0)."""
    end_step: int | None = Field(None, ge=0)
    """The step from which the final sparsity holds (t1); None: three quarters into the run."""
    every: int = Field(50, gt=0)
    """Steps between mask updates from t0 to t1."""
    targets: list[str] = ["*.w"]
    """fnmatch patterns on the params' dotted names: which weights (2-D or more) are pruned.
    The default takes every linear weight (and a conv's), leaving embeddings, norms, biases."""

    @model_validator(mode="after")
    def _end_after_start(self) -> PruneConfig:
        if self.end_step is not None and self.end_step < self.start_step:
            raise ValueError(f"end_step={self.end_step} comes before start_step={self.start_step}")
        return self

    @property
    def enabled(self) -> bool:
        return self.sparsity > 0.0

    def end(self, total_steps: int) -> int:
        return (
            self.end_step
            if self.end_step is not None
            else max(self.start_step, (3 * total_steps) // 4)
        )


def sparsity_at(step: int, final: float, start: int, end: int) -> float:
    """The cubic schedule: 0 before `start`, `final` from `end` on, rising fast then slowly."""
    if step < start:
        return 0.0
    if step >= end:
        return final
    done = (step - start) / (end - start)
    return final * (1.0 - (1.0 - done) ** 3)


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """True for the entries kept: all but the `round(sparsity * n)` smallest in magnitude
    (ties broken by position, so the mask is the same on every run)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
    count = round(sparsity * weight.numel())
    keep = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
    if count:
        order = torch.argsort(weight.detach().abs().flatten(), stable=True)
        keep[order[:count]] = False
    return keep.view_as(weight)


def pruned_names(params: Params, patterns: Sequence[str]) -> list[str]:
    """The dotted names of the weights `patterns` select (2-D or more); refuses a pattern
    that selects none."""
    named = tree.to_dotted(params)
    chosen = [
        name
        for name, leaf in named.items()
        if leaf.ndim >= 2 and any(matches(name, p) for p in patterns)
    ]
    idle = [p for p in patterns if not any(matches(name, p) for name in chosen)]
    if idle:
        raise ConfigError(
            f"PruneConfig.targets: {', '.join(repr(p) for p in idle)} selects no weight of 2 "
            f"or more dims (weights: {', '.join(list(named)[:6])}, ...)"
        )
    return chosen


def init_masks(params: Params, names: Sequence[str]) -> Params:
    """All-true masks for the weights `names`: nothing pruned yet."""
    named = tree.to_dotted(params)
    return tree.from_dotted(
        {name: torch.ones_like(named[name], dtype=torch.bool) for name in names}
    )


def apply_masks(params: Params, masks: Params) -> None:
    """Zero the pruned entries of `params` in place: each mask multiplies the param of its
    name (params without a mask, and masks without a param, as in a partial EMA, are left)."""
    if not masks:  # pruning off: nothing to walk (the step calls this after every update)
        return
    named, flat = tree.to_dotted(params), tree.to_dotted(masks)
    pairs = [(named[name], mask) for name, mask in flat.items() if name in named]
    if pairs:
        torch._foreach_mul_([p for p, _ in pairs], [m for _, m in pairs])


class Pruner:
    """Updates the state's masks on the schedule (the loop calls it after each update)."""

    def __init__(self, cfg: PruneConfig, total_steps: int):
        self.cfg = cfg
        self.start, self.end = cfg.start_step, cfg.end(total_steps)
        self.current: float | None = None
        """The masks' sparsity, counted when they change (not every step)."""

    def due(self, step: int) -> bool:
        """Whether the masks are recomputed once the state reaches `step`."""
        inside = self.start <= step <= self.end
        return inside and ((step - self.start) % self.cfg.every == 0 or step == self.end)

    def after_update(self, params: Params, masks: Params, ema: Params, step: int) -> None:
        """At a schedule step: masks from the weights' magnitudes, then params and EMA masked,
        all in place (the step's compiled graphs keep reading the same tensors)."""
        if not self.due(step):
            if self.current is None:  # a resumed run's masks, counted once
                self.current = self.sparsity(masks)
            return
        sparsity = sparsity_at(step, self.cfg.sparsity, self.start, self.end)
        named = tree.to_dotted(params)
        with torch.no_grad():
            for name, mask in tree.to_dotted(masks).items():
                mask.copy_(magnitude_mask(named[name], sparsity))
            apply_masks(params, masks)
            apply_masks(ema, masks)
        self.current = self.sparsity(masks)

    @staticmethod
    def sparsity(masks: Params) -> float:
        """The share of the masked weights' entries that are pruned."""
        leaves = tree.leaves(masks)
        total = sum(mask.numel() for mask in leaves)
        return 1.0 - sum(int(mask.sum()) for mask in leaves) / total if total else 0.0
