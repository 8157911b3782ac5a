"""Learning-rate schedules: pure functions of the step (a tensor), so they compile once."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from craft.config import configurable
from craft.errors import ConfigError


@configurable
class Schedule(BaseModel):
    """constant | warmup_cosine | wsd (warmup, stable, then a linear decay over the last part)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    kind: Literal["constant", "warmup_cosine", "wsd"] = "warmup_cosine"
    peak_lr: float = Field(1e-3, gt=0)
    final_lr: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(100, ge=0)
    total_steps: int | None = Field(None, gt=0)
    """Where the schedule ends; None: TrainConfig.steps (set it to end elsewhere on purpose)."""
    decay_fraction: float = Field(0.2, gt=0, le=1)
    """wsd only: the share of total_steps spent decaying to final_lr."""

    @model_validator(mode="after")
    def _warmup_fits(self) -> Schedule:
        if self.total_steps is None:
            return self  # checked again once the run fills it in (`for_run`)
        if self.kind != "constant" and self.warmup_steps > self.total_steps:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} exceeds total_steps={self.total_steps}"
            )
        return self

    def for_run(self, steps: int) -> Schedule:
        """This schedule with `total_steps` filled in from the run's length when unset."""
        if self.total_steps is not None:
            return self
        if self.kind != "constant" and self.warmup_steps > steps:
            raise ConfigError(
                f"Schedule.warmup_steps = {self.warmup_steps} exceeds the run's {steps} steps "
                "(TrainConfig.steps, which Schedule.total_steps follows when unset)"
            )
        return self.model_copy(update={"total_steps": steps})

    @property
    def total(self) -> int:
        if self.total_steps is None:
            raise ValueError("Schedule.total_steps is unset: call for_run(steps) first")
        return self.total_steps

    def __call__(self, step: torch.Tensor | int) -> torch.Tensor:
        """The learning rate for optimizer step `step` (0-based)."""
        s = torch.as_tensor(step, dtype=torch.float32)
        peak = torch.tensor(self.peak_lr)
        if self.kind == "constant":
            return peak.expand_as(s).clone()
        warmup = peak * (s + 1) / max(self.warmup_steps, 1)
        if self.kind == "warmup_cosine":
            cosine_span = self.total - self.warmup_steps
            if cosine_span == 0:  # all warmup: the final lr from total_steps on
                progress = (s >= self.total).float()
            else:
                progress = ((s - self.warmup_steps) / cosine_span).clamp(0.0, 1.0)
            after = self.final_lr + 0.5 * (self.peak_lr - self.final_lr) * (
                1 + torch.cos(math.pi * progress)
            )
        else:
            decay_start = self.total * (1 - self.decay_fraction)
            span = max(self.total - decay_start, 1.0)
            progress = ((s - decay_start) / span).clamp(0.0, 1.0)
            after = self.peak_lr + (self.final_lr - self.peak_lr) * progress
        return torch.where(s < self.warmup_steps, warmup, after)
