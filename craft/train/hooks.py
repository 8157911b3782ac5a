"""Hooks: how logging, checkpointing, sampling and user code follow a training run.

A hook subclasses `Hook` and overrides what it needs. The loop calls, in order of the hooks list:
`on_start` once, `on_step_end` after every step, `on_eval` after each evaluation,
`on_checkpoint` after each checkpoint is written, `on_status` when the loop is busy with
something other than steps (compiling the step), and `on_end` once (also after Ctrl-C or a
failure, so files get closed). A user adds one through gin:
`TrainConfig.hooks = ['my_package.my_module.MyHook']` (constructed with no arguments).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunInfo:
    """What hooks may read about the run (they must not change the training state)."""

    run_dir: Path
    total_steps: int
    start_step: int
    configs: dict[str, Any]
    """Effective configuration: {model name: {field: value}} as written to config.json."""
    model_name: str = ""
    """The registered model (craft.models.MODELS)."""
    model_config: Any = None
    """The model's validated config, data fields (vocab size, classes) filled in."""
    task: Any = None
    """The run's Task (craft.tasks.base.Task)."""
    read_state: Callable[[], Any] | None = None
    """The current TrainState as the model is used: its params are the EMA's when
    TrainConfig.ema_decay is set (and a LoRA run's adapters merged), for previews."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Shared objects between built-in hooks (e.g. the trackers); not a stable API."""


class Hook:
    """Does nothing; subclasses override the events they care about."""

    def on_start(self, run: RunInfo) -> None:
        """Before the first step (also on resume)."""

    def on_step_end(self, run: RunInfo, step: int, metrics: dict[str, float]) -> None:
        """After optimizer step `step` (1-based count of steps done); metrics are floats: loss,
        lr, grad_norm, the weight in the task's unit (tokens, images) and its rate per second
        (tokens_per_s), step_time_s, mfu where known, skipped and loss_scale in fp16."""

    def on_eval(self, run: RunInfo, step: int, results: dict[str, float]) -> None:
        """After an evaluation: the task's metrics by split, `val/loss`, `val/accuracy`, ..."""

    def on_checkpoint(self, run: RunInfo, step: int, path: Path) -> None:
        """After a checkpoint is complete on disk at `path`."""

    def on_end(self, run: RunInfo, summary: dict[str, Any]) -> None:
        """After the last step, an interruption or a failure; summary says which."""

    def on_status(self, run: RunInfo, text: str) -> None:
        """What the loop is doing now when it is not stepping (e.g. compiling the step)."""
