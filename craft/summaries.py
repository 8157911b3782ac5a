"""What a finished run prints: how it ended and its final metrics, split by split."""

from __future__ import annotations

from typing import Any

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


def _metric(name: str, value: float) -> str:
    if name in _PERCENT:
        return f"{name} {value:.2%}"
    if name in _COUNTS:
        return f"{name} {value:,.0f}"
    return f"{name} {value:.4f}"
