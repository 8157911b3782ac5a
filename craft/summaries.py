"""What a finished run prints: how it ended and its final metrics, split by split."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

SUMMARY_FILE = "summary.json"

_PERCENT = ("accuracy",)
_COUNTS = ("tokens", "images")


def format_summary(summary: dict[str, Any]) -> str:
    """`status: finished after N steps ...`, one line per evaluated split, the checkpoint."""
    lines = [
        f"status: {summary['status']} after {summary['steps']} steps "
        f"({summary['examples']:,} examples in {summary['seconds']:.1f} s)"
    ]
    by_split: dict[str, list[str]] = {}
    for name, value in summary.get("metrics", {}).items():
        split, _, metric = name.partition("/")
        by_split.setdefault(split, []).append(_metric(metric, value))
    lines += [f"{split}: {', '.join(parts)}" for split, parts in by_split.items()]
    if summary.get("best_val_loss") is not None:
        lines.append(f"best val loss {summary['best_val_loss']:.4f}")
    lines.append(f"checkpoint: {summary['checkpoint'] or 'none written'}")
    lines.append(f"run folder: {summary['run_dir']}")
    return "\n".join(lines)


def print_summary(summary: dict[str, Any]) -> None:
    print(format_summary(summary))


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    """`<run_dir>/summary.json`: how the run ended and its final metrics (non-finite numbers as
    null), for sweeps and scripts."""
    path = Path(run_dir) / SUMMARY_FILE
    temporary = path.with_suffix(".json.tmp")  # renamed into place: never half a file
    temporary.write_text(json.dumps(_finite(summary), indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _metric(name: str, value: float) -> str:
    if name in _PERCENT:
        return f"{name} {value:.2%}"
    if name in _COUNTS:
        return f"{name} {value:,.0f}"
    return f"{name} {value:.4f}"
