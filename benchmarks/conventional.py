"""The conventional optimizer of the baselines: `torch.optim.AdamW` with Craft's AdamW settings
(no decay on biases and norm scales) and its schedule as a `LambdaLR`."""

from __future__ import annotations

from typing import Any

import torch

from craft.optim import AdamW, Schedule


def torch_adamw(
    model: torch.nn.Module, adamw: Any, schedule: Any
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """(optimizer, lr scheduler) matching a Craft run's `AdamW` and `Schedule`."""
    assert isinstance(adamw, AdamW) and isinstance(schedule, Schedule)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": adamw.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=schedule.peak_lr, betas=(adamw.beta1, adamw.beta2), eps=adamw.eps,
    )  # fmt: skip
    lr_of = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: float(schedule(step)) / schedule.peak_lr
    )
    return optimizer, lr_of
