"""A sweep's report: `summary.csv`, `summary.md` (a row per run) and `curves.png` (every run's
val loss against step, the best one highlighted), read from the manifest and the run folders."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from craft.errors import DataError
from craft.sweeps.manifest import Manifest, SweepRun
from craft.tracking.jsonl import read_metrics
from craft.tracking.plots import latest_per_step, series

SUMMARY_CSV, SUMMARY_MD, CURVES = "summary.csv", "summary.md", "curves.png"
FENCE = "`" * 3


@dataclass
class RunRow:
    run: SweepRun
    steps: int | None
    final: dict[str, float]  # the last whole evaluation's val metrics, by name
    best_val_loss: float | None
    curve: tuple[list[float], list[float]]  # (step, val loss)


def write_report(sweep_dir: Path) -> list[Path]:
    """Write the three files into `sweep_dir`; returns their paths."""
    sweep_dir = Path(sweep_dir)
    manifest = Manifest.load(sweep_dir)
    rows = read_rows(sweep_dir, manifest)
    best = best_row(rows)
    paths = [
        _write_csv(sweep_dir / SUMMARY_CSV, manifest, rows),
        _write_markdown(sweep_dir / SUMMARY_MD, manifest, rows, best),
    ]
    if any(row.curve[0] for row in rows):
        paths.append(_plot(sweep_dir / CURVES, manifest, rows, best))
    return paths


def read_rows(sweep_dir: Path, manifest: Manifest | None = None) -> list[RunRow]:
    """Each run's figures, in the manifest's order."""
    manifest = manifest or Manifest.load(sweep_dir)
    return [_read_run(Path(sweep_dir), run) for run in manifest.runs]


def best_row(rows: list[RunRow]) -> RunRow | None:
    """The run with the lowest best val loss among those finished or stopped at their time
    limit (None when there is none)."""
    scored = [
        r for r in rows
        if r.run.status in ("finished", "stopped") and _is_number(r.best_val_loss)
    ]  # fmt: skip
    return min(scored, key=lambda r: r.best_val_loss or 0.0) if scored else None


def _read_run(sweep_dir: Path, run: SweepRun) -> RunRow:
    run_dir = sweep_dir / run.label
    summary: dict[str, Any] = {}
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):  # none yet, or cut short: read the metrics alone
        summary = {}
    try:
        metrics = latest_per_step(read_metrics(run_dir))
    except DataError:  # the run died before it logged anything
        metrics = []
    curve = series(metrics, "val/loss")
    final = {
        name.removeprefix("val/"): value
        for name, value in summary.get("metrics", {}).items()
        if name.startswith("val/")
    }
    best = summary.get("best_val_loss")
    if best is None and curve[1]:
        best = min(curve[1])
    steps = summary.get("steps") or (int(metrics[-1]["step"]) if metrics else None)
    return RunRow(run, steps, final, best, curve)


def _columns(manifest: Manifest, rows: list[RunRow]) -> list[str]:
    extra: list[str] = []
    for row in rows:
        extra += [name for name in row.final if name not in extra and name != "loss"]
    return ["run", *manifest.keys, "status", "steps", "final_val_loss", "best_val_loss",
            *[f"final_val_{name}" for name in extra], "seconds"]  # fmt: skip


def _values(row: RunRow, columns: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {"run": row.run.label, **row.run.bindings}
    values.update(
        status=row.run.status, steps=row.steps, seconds=row.run.seconds,
        final_val_loss=row.final.get("loss"), best_val_loss=row.best_val_loss,
    )  # fmt: skip
    for column in columns:
        if column.startswith("final_val_") and column != "final_val_loss":
            values[column] = row.final.get(column.removeprefix("final_val_"))
    return {column: values.get(column) for column in columns}


def _write_csv(path: Path, manifest: Manifest, rows: list[RunRow]) -> Path:
    columns = _columns(manifest, rows)
    with open(path, "w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in _values(row, columns).items()})
    return path


def _write_markdown(path: Path, manifest: Manifest, rows: list[RunRow], best: RunRow | None
                    ) -> Path:  # fmt: skip
    columns = _columns(manifest, rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.run.status] = counts.get(r.run.status, 0) + 1
    lines = [
        f"# Sweep {manifest.name}: {path.parent}",
        "",
        f"Gin files: {', '.join(manifest.gin_files) or 'none'}"
        + (f"; params: {'; '.join(manifest.gin_params)}" if manifest.gin_params else ""),
        f"Runs: {len(rows)}: " + ", ".join(f"{n} {status}" for status, n in counts.items()) + ".",
        "",
    ]
    if best is not None:
        bound = ", ".join(f"{k} = {v}" for k, v in best.run.bindings.items())
        lines += [f"Best (lowest val loss): **{best.run.label}** ({bound}), "
                  f"best val loss {best.best_val_loss:.4f}.", ""]  # fmt: skip
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [
            f"{v:.1f}" if c == "seconds" and isinstance(v, float) else _cell(v)
            for c, v in _values(row, columns).items()
        ]
        if row is best:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    failures = [r for r in rows if r.run.status == "failed" and r.run.error]
    for row in failures:
        error = (row.run.error or "").replace(FENCE, "'" * 3)  # keeps the code block whole
        lines += ["", f"{row.run.label} failed (exit {row.run.exit_code}):", FENCE, error, FENCE]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _plot(path: Path, manifest: Manifest, rows: list[RunRow], best: RunRow | None) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for row in rows:
        if not row.curve[0] or row is best:
            continue
        ax.plot(*row.curve, color="0.6", linewidth=1, alpha=0.8, marker=".")
    if best is not None and best.curve[0]:
        ax.plot(*best.curve, color="tab:red", linewidth=2.5, marker="o",
                label=f"best: {best.run.label}")  # fmt: skip
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("val loss")
    ax.set_title(f"sweep {manifest.name}: {len(rows)} runs (grey: the others)")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)
    return path


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) >= 100:
        return f"{value:,.0f}"  # counts (tokens, images)
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.1f}"
    return str(value).replace("|", "\\|")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
