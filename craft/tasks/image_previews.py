"""The classifier's previews: `predictions.png` (test images with their predicted labels,
mistakes in red) and, at the end of a run, `confusion.png` over the whole test split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from craft import tree
from craft.models import model_spec
from craft.train.hooks import Hook, RunInfo

GRID = 8  # an 8 x 8 grid of test images
PREDICTIONS_FILE, CONFUSION_FILE = "predictions.png", "confusion.png"


class PredictionsHook(Hook):
    """Every `every` steps (0: only at the end) the predictions grid; at the end, the
    confusion matrix too. Both also go to the trackers as images."""

    def __init__(self, task: Any, every: int, trackers: Any):
        self.task, self.every, self.trackers = task, every, trackers

    def on_step_end(self, run: RunInfo, step: int, metrics: dict[str, float]) -> None:
        if self.every and step % self.every == 0 and step < run.total_steps:
            self.draw(run, step, confusion=False)

    def on_end(self, run: RunInfo, summary: dict[str, Any]) -> None:
        if summary["status"] == "finished":
            self.draw(run, summary["steps"], confusion=True)

    @torch.no_grad()
    def draw(self, run: RunInfo, step: int, *, confusion: bool) -> list[Path]:
        assert run.read_state is not None
        params = run.read_state().params
        device = tree.leaves(params)[0].device
        predict = _predictor(run, params, device)
        pixels, labels = self.task.data.split("test")
        shown = GRID * GRID
        grid_images = np.asarray(pixels[:shown])
        predicted = predict(grid_images)
        names = list(self.task.data.class_names)
        written = [
            _grid(run.run_dir / PREDICTIONS_FILE, grid_images, np.asarray(labels[:shown]),
                  predicted, names, step)
        ]  # fmt: skip
        if confusion:
            all_predicted = np.concatenate(
                [predict(np.asarray(pixels[i : i + 1000])) for i in range(0, len(labels), 1000)]
            )
            written.append(
                _confusion(run.run_dir / CONFUSION_FILE, np.asarray(labels), all_predicted, names)
            )
        if self.trackers is not None:
            for path in written:
                self.trackers.log_image(path.stem, path, step)
        return written


def _predictor(run: RunInfo, params: Any, device: torch.device) -> Any:
    task, cfg = run.task, run.model_config
    apply = model_spec(run.model_name).apply

    def predict(batch: np.ndarray) -> np.ndarray:
        x = task.normalize(torch.from_numpy(np.array(batch)).to(device))  # a writable copy
        return apply(params, x, cfg).argmax(-1).cpu().numpy()

    return predict


def _grid(
    path: Path, pixels: np.ndarray, labels: np.ndarray, predicted: np.ndarray,
    names: list[str], step: int,
) -> Path:  # fmt: skip
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 8.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(GRID, GRID)
    wrong = 0
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= len(labels):
            continue
        ax.imshow(pixels[index].transpose(1, 2, 0).squeeze(-1), cmap="gray")
        ok = predicted[index] == labels[index]
        wrong += not ok
        title = (
            names[predicted[index]] if ok else f"{names[predicted[index]]} ({names[labels[index]]})"
        )
        ax.set_title(title, color="black" if ok else "red", fontsize=9)
    fig.suptitle(
        f"test predictions at step {step}: {wrong} wrong of {len(labels)} (red: predicted (true))"
    )
    fig.savefig(path, dpi=80)
    return path


def _confusion(path: Path, labels: np.ndarray, predicted: np.ndarray, names: list[str]) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    classes = len(names)
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (labels.astype(np.int64), predicted.astype(np.int64)), 1)
    fig = Figure(figsize=(7, 6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    shown = ax.imshow(np.log1p(counts), cmap="Blues")
    for (row, col), count in np.ndenumerate(counts):
        if count:
            ax.text(col, row, str(count), ha="center", va="center", fontsize=7,
                    color="white" if row == col else "black")  # fmt: skip
    ax.set_xticks(range(classes), names)
    ax.set_yticks(range(classes), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"test confusion matrix: accuracy {accuracy:.2%} of {counts.sum():,}")
    fig.colorbar(shown, ax=ax, label="log(1 + count)")
    fig.savefig(path, dpi=100)
    return path
