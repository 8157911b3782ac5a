"""Image grids of a diffusion model's samples: `samples.png` while training (one row per
class), and the PNG the `sample` command writes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from craft.models import model_spec
from craft.train.hooks import Hook, RunInfo

SAMPLES_FILE = "samples.png"
PADDING = 2  # pixels of background between images
SCALE = 2  # each pixel drawn as SCALE x SCALE, so a 28-pixel digit is readable


def write_grid(path: Path, images: torch.Tensor, columns: int) -> Path:
    """Images in [0, 1] `[N, C, H, W]` (C = 1 or 3) as one PNG, `columns` per row, written
    through a temporary name so a reader never sees half a file."""
    from matplotlib.image import imsave

    n, channels, height, width = images.shape
    rows = max(1, -(-n // columns))
    cell_h, cell_w = height + PADDING, width + PADDING
    canvas = np.ones((rows * cell_h + PADDING, columns * cell_w + PADDING, channels), np.float32)
    pixels = images.detach().float().clamp(0, 1).cpu().numpy().transpose(0, 2, 3, 1)
    for index in range(n):
        top, left = PADDING + (index // columns) * cell_h, PADDING + (index % columns) * cell_w
        canvas[top : top + height, left : left + width] = pixels[index]
    canvas = canvas.repeat(SCALE, axis=0).repeat(SCALE, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if channels == 1:
        imsave(tmp, canvas[..., 0], cmap="gray", vmin=0.0, vmax=1.0, format="png")
    else:
        imsave(tmp, canvas, format="png")
    os.replace(tmp, path)
    return path


class SamplesHook(Hook):
    """Every `every` steps (0: only at the end) and at the end, `samples.png`: the task's
    `preview_per_class` samples of each class, a row per class, drawn with its sampler and
    guidance from a fixed seed (the same starting noise each time, so the grids compare);
    also sent to the trackers as an image."""

    def __init__(self, task: Any, every: int, trackers: Any):
        self.task, self.every, self.trackers = task, every, trackers

    def on_step_end(self, run: RunInfo, step: int, metrics: dict[str, float]) -> None:
        if self.every and step % self.every == 0 and step < run.total_steps:
            self.draw(run, step)

    def on_end(self, run: RunInfo, summary: dict[str, Any]) -> None:
        if summary["status"] == "finished":
            self.draw(run, summary["steps"])

    def draw(self, run: RunInfo, step: int) -> Path:
        assert run.read_state is not None
        params = run.read_state().params
        spec, cfg = model_spec(run.model_name), run.model_config

        def apply(p: Any, inputs: Any, **kwargs: Any) -> torch.Tensor:
            return spec.apply(p, inputs, cfg, **kwargs)

        sampler = self.task.sampler
        per_class = sampler.cfg.preview_per_class
        images = sampler.draw(apply, params, sampler.grid_labels(per_class))
        path = write_grid(run.run_dir / SAMPLES_FILE, (images + 1) * 0.5, per_class)
        if self.trackers is not None:
            self.trackers.log_image(path.stem, path, step)
        return path
