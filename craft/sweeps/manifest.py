"""`sweep.json`: what a sweep runs and how each run stands, rewritten atomically as runs end.

It is the sweep's memory: `--resume` reads the gin files, params and runs from it, and the
report reads each run's bindings and status.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from craft.errors import ConfigError

MANIFEST = "sweep.json"


@dataclass
class SweepRun:
    """One run of a sweep: its folder name, its bindings (gin text) and how it stands."""

    label: str
    bindings: dict[str, str]
    status: str = "pending"
    """pending, running, finished, failed, interrupted, or stopped (at the sweep's time limit
    for a run); all but finished are run again by --resume."""
    exit_code: int | None = None
    seconds: float | None = None
    error: str | None = None


@dataclass
class Manifest:
    name: str
    gin_files: list[str]
    gin_params: list[str]
    flags: dict[str, Any]  # the grid, ranges, draws and seed as given: how the runs came about
    runs: list[SweepRun] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        """The swept bindings, in flag order."""
        return list(self.runs[0].bindings) if self.runs else []

    def save(self, sweep_dir: Path) -> None:
        path = sweep_dir / MANIFEST
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, path)

    @classmethod
    def load(cls, sweep_dir: Path) -> Manifest:
        path = sweep_dir / MANIFEST
        if not path.is_file():
            raise ConfigError(f"{sweep_dir} is not a sweep folder: it has no {MANIFEST}")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            runs = [SweepRun(**run) for run in raw.pop("runs")]
            return cls(**raw, runs=runs)
        except (json.JSONDecodeError, TypeError, KeyError) as error:
            raise ConfigError(f"{path} is damaged: {error}") from None


def run_label(index: int, bindings: dict[str, str], width: int) -> str:
    """`03_peak_lr-0.003_dropout-0.1`: the index, then each swept field and value."""
    parts = [f"{index:0{width}d}"]
    for key, value in bindings.items():
        text = re.sub(r"[^\w.-]+", "", value.strip("'\"")) or "x"
        parts.append(f"{key.rsplit('.', 1)[-1]}-{text}")
    return "_".join(parts)[:120]
