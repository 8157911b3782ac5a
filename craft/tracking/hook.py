"""`TrackingHook`: the training loop's events, as tracker calls; `make_trackers` from config."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from craft.errors import DataError
from craft.tracking.base import Tracker, Trackers, one_line, warn
from craft.tracking.config import MetricsConfig
from craft.tracking.jsonl import JsonlTracker
from craft.tracking.plots import plot_run
from craft.tracking.progress import ProgressTracker
from craft.tracking.wandb_run import WandbTracker, wandb_mode
from craft.train.hooks import Hook, RunInfo


def make_trackers(
    cfg: MetricsConfig, run_dir: Path, configs: dict[str, Any], extra: tuple[Tracker, ...] = ()
) -> Trackers:
    """metrics.jsonl always; the progress display and W&B as `cfg` says; then `extra`."""
    trackers: list[Tracker] = [JsonlTracker(run_dir, every=cfg.log_every)]
    if cfg.progress_bar:
        trackers.append(ProgressTracker(every_s=cfg.progress_every_s))
    mode = wandb_mode(cfg.wandb)
    if mode != "disabled":
        trackers.append(
            WandbTracker(
                run_dir,
                mode=mode,
                project=cfg.wandb_project,
                config=configs,
                every=math.lcm(cfg.log_every, cfg.wandb_every),
                group=cfg.wandb_group,
            )
        )
    return Trackers([*trackers, *extra])


class TrackingHook(Hook):
    """Train metrics as `train/...` (plus memory), evaluations as given (`val/...`); at the end
    the trackers finish and `loss.png` is drawn."""

    def __init__(self, trackers: Trackers):
        self.trackers = trackers

    def on_start(self, run: RunInfo) -> None:
        run.extras["trackers"] = self.trackers  # how previews log their texts and images
        self.trackers.start(run)

    def on_step_end(self, run: RunInfo, step: int, metrics: dict[str, float]) -> None:
        row = {f"train/{name}": value for name, value in metrics.items()}
        memory = memory_mb()
        if memory is not None:
            row["train/memory_mb"] = memory
        self.trackers.log_train(row, step, last=step == run.total_steps)

    def on_eval(self, run: RunInfo, step: int, results: dict[str, float]) -> None:
        self.trackers.log(results, step)

    def on_status(self, run: RunInfo, text: str) -> None:
        self.trackers.status(text)

    def on_end(self, run: RunInfo, summary: dict[str, Any]) -> None:
        self.trackers.finish()
        try:
            plot_run(run.run_dir)
        except DataError:
            pass  # no train rows yet (the run stopped before its first logged step)
        except Exception as error:
            warn(f"could not plot the run ({one_line(error)})")


def memory_mb() -> float | None:
    """Peak CUDA memory allocated when CUDA is in use, else this process's current RSS."""
    # is_initialized, not is_available: a CPU run on a GPU machine must not create a context.
    if torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None  # not Linux: leave the field out
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
