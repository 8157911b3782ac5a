"""`loss.png`: train and val loss and the learning rate against step, from metrics.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from craft.errors import DataError
from craft.tracking.jsonl import METRICS_FILE, read_metrics

PLOT_FILE = "loss.png"


def plot_run(run_dir: str | Path) -> Path:
    """Plot train and val loss (top) and lr (bottom) against step into `<run_dir>/loss.png`."""
    # The object API with an explicit Agg canvas: no display needed, and no pyplot global state
    # (pyplot would change the backend of a notebook that imports Craft).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    rows = latest_per_step(read_metrics(run_dir))
    train = [row for row in rows if "train/loss" in row]
    if not train:
        raise DataError(f"{run_dir / METRICS_FILE} has no train rows: the run logged no step")
    fig = Figure(figsize=(8, 6), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, lr_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    loss_ax.plot(*series(train, "train/loss"), label="train loss")
    val = series(rows, "val/loss")
    if val[0]:
        loss_ax.plot(*val, marker="o", label="val loss")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    loss_ax.grid(alpha=0.3)
    loss_ax.set_title("/".join(run_dir.resolve().parts[-3:]))
    lr_ax.plot(*series(train, "train/lr"), color="tab:green")
    lr_ax.set_xlabel("step")
    lr_ax.set_ylabel("learning rate")
    lr_ax.grid(alpha=0.3)
    out = run_dir / PLOT_FILE
    fig.savefig(out, dpi=100)
    return out


def latest_per_step(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One merged row per step, sorted; a later value wins. A run resumed from an older
    checkpoint logs some steps again, and the later rows are the ones that count."""
    merged: dict[int, dict[str, Any]] = {}
    for row in rows:
        if isinstance(row.get("step"), int):
            merged.setdefault(row["step"], {}).update(row)
    return [merged[step] for step in sorted(merged)]


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
    return [p[0] for p in points], [p[1] for p in points]
