"""RESULTS.md's generated part: the table of rows, samples, `bpc_vs_params.png` and
`val_curves.png`, from the row files in `results/` (written by suite.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- suite table: begin -->", "<!-- suite table: end -->"
SIZES = {"1m": 0, "10m": 1, "100m": 2}
ALL_ROWS = [f"{tok}_{size}" for size in SIZES for tok in ("char", "subword")]


def write_table(results: Path) -> list[Path]:
    """Rewrite the generated part of RESULTS.md (beside `results/`) and the two plots."""
    rows = _load(results)
    folder = results.parent
    markdown = folder / "RESULTS.md"
    text = markdown.read_text(encoding="utf-8") if markdown.is_file() else f"{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    body = "\n".join([BEGIN, _table(rows), _samples(rows), END])
    markdown.write_text(head + body + tail, encoding="utf-8")
    return [markdown, _plot_bpc(rows, folder / "bpc_vs_params.png"),
            _plot_curves(rows, folder / "val_curves.png")]  # fmt: skip


def _load(results: Path) -> list[dict[str, Any]]:
    rows = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    return sorted(rows, key=lambda r: (r["device"], SIZES[r["size"]], r["tokenizer"]))


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| row | device | params | tokens seen | best step / steps | best val loss | val bpc | "
        "test bpc | train time | recipe (lr, dropout, wd, batch x context) | command |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    done = set()
    for r in rows:
        done.add((r["row"], r["device"]))
        recipe = r["recipe"]
        stopped = "" if r["status"] == "finished" else " (stopped at its time limit)"
        lines.append(
            f"| {r['row']} | {r['device_name']} | {r['params'] / 1e6:.2f}M | "
            f"{r['tokens_seen'] / 1e6:.2f}M | {r['best_step']} / {r['steps']}{stopped} | "
            f"{r['best_val_loss']:.4f} | {r['val_bpc']:.3f} | **{r['test_bpc']:.3f}** | "
            f"{_minutes(r['train_s'])} | {recipe['peak_lr']:g}, {recipe['dropout']:g}, "
            f"{recipe['weight_decay']:g}, {recipe['batch_size']} x {recipe['context']} | "
            f"`{r['command']}` |"
        )
    for row in ALL_ROWS:
        if not any(key[0] == row for key in done):
            lines.append(f"| {row} | not run | | | | | | | | | |")
    return "\n".join(lines) + "\n"


def _samples(rows: list[dict[str, Any]]) -> str:
    parts = ["### Samples (prompt `TYRION_LANNISTER:`, best checkpoint, temperature 0.8)\n"]
    for r in rows:
        for index, sample in enumerate(r["samples"]):
            text = sample.strip().replace("```", "'''")
            parts.append(f"**{r['row']} ({r['device']}), seed {index}**\n\n```\n{text}\n```\n")
    return "\n".join(parts)


def _plot_bpc(rows: list[dict[str, Any]], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for tokenizer, color in (("char", "tab:blue"), ("subword", "tab:orange")):
        for dev, marker, style in (("cpu", "o", "-"), ("gpu", "s", "--")):
            points = sorted((r["params"], r["test_bpc"]) for r in rows
                            if r["tokenizer"] == tokenizer and r["device"] == dev)  # fmt: skip
            if points:
                ax.plot(*zip(*points, strict=True), style, marker=marker, color=color,
                        label=f"{tokenizer} ({dev})")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("test bits per character")
    ax.set_title("ChatGOT: test bits per character against model size")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=100)
    return path


def _plot_curves(rows: list[dict[str, Any]], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, tokenizer in zip(axes, ("char", "subword"), strict=True):
        for r in rows:
            if r["tokenizer"] != tokenizer or not r["val_curve"]:
                continue
            steps, losses = zip(*r["val_curve"], strict=True)
            ax.plot(steps, losses, "--" if r["device"] == "gpu" else "-", marker=".",
                    label=f"{r['size']} ({r['device']})")  # fmt: skip
        ax.set_title(f"{tokenizer}: val loss (nats per token)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
    fig.savefig(path, dpi=100)
    return path


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"
