"""`logs/metrics.jsonl`: one JSON row per logged step, `{"step": 5, "train/loss": ...}`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from craft.errors import DataError
from craft.tracking.base import Tracker

METRICS_FILE = Path("logs") / "metrics.jsonl"


class JsonlTracker(Tracker):
    """Appends rows to `<run_dir>/logs/metrics.jsonl`; a resumed run continues the file after
    dropping the rows past its checkpoint, so no step appears twice."""

    def __init__(self, run_dir: Path, every: int = 1):
        self.path = Path(run_dir) / METRICS_FILE
        self.every = every
        self._file: Any = None

    def start(self, run: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if getattr(run, "start_step", 0):  # resumed: the steps past the checkpoint are redone
            drop_rows_after(self.path.parent.parent, run.start_step)
        # Line buffering keeps every row on disk as it is written: a crash loses nothing and
        # `tail -f` follows the run.
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self._file is not None:
            row = {"step": step, **{k: _json_value(v) for k, v in metrics.items()}}
            self._file.write(json.dumps(row) + "\n")

    def finish(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of `<run_dir>/logs/metrics.jsonl`, in file order."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise DataError(f"no {METRICS_FILE.as_posix()} in {run_dir}: not a Craft run folder?")
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                break  # a run killed mid-write leaves a partial last line: skip it
            raise DataError(f"{path}:{number}: not a JSON row: {error}") from None
    return rows


def drop_rows_after(run_dir: str | Path, step: int) -> int:
    """Remove the rows past `step` (a resumed run redoes those steps); returns how many.

    The file is rewritten to a temporary name and renamed, so a crash keeps the old one.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1  # a partial last line from a killed run
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        tmp.replace(path)
    return dropped


def _json_value(value: Any) -> Any:
    """JSON-safe: tensors and numpy scalars to numbers, NaN and inf to null (strict JSON)."""
    if isinstance(value, bool | int | str) or value is None:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None
