"""Progress on stderr: a tqdm bar on a terminal, a plain line every few seconds elsewhere.

Redirected to a file (CI, nohup, a cluster's log) a bar writes a carriage return per update,
hundreds of kilobytes per run; a line every `every_s` seconds reads well in a log.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from craft.tracking.base import Tracker


class ProgressTracker(Tracker):
    """Shows step, loss and throughput; `stream` defaults to stderr as it is when started."""

    def __init__(self, *, every_s: float = 10.0, stream: TextIO | None = None):
        self.every_s = every_s
        self.stream = stream
        self._bar: Any = None
        self._total = 0
        self._last_line = 0.0
        self._status = ""

    def start(self, run: Any) -> None:
        stream = self.stream or sys.stderr  # looked up now, so a redirected stderr works
        self.stream = stream
        self._total = run.total_steps
        if _is_terminal(stream):
            from tqdm import tqdm  # not tqdm.auto: the bar must go to stderr, also in notebooks

            self._bar = tqdm(
                total=run.total_steps, initial=run.start_step, file=stream, unit="step",
                dynamic_ncols=True,
            )  # fmt: skip
        else:
            self._last_line = time.monotonic()

    def status(self, text: str) -> None:
        """A note shown until the next step (e.g. "compiling the step")."""
        self._status = text
        if self._bar is not None:
            self._bar.set_description_str(text)
        elif self.stream is not None:
            print(f"craft: {text}", file=self.stream, flush=True)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if "train/loss" not in metrics:
            return  # evaluation rows: the summary shows them
        fields = _fields(metrics)
        if self._bar is not None:
            if self._status:
                self._bar.set_description_str("")
                self._status = ""
            # Postfix first: update() redraws (at most every 0.1 s) and shows both.
            self._bar.set_postfix(fields, refresh=False)
            self._bar.update(step - self._bar.n)
            return
        now = time.monotonic()
        if now - self._last_line >= self.every_s or step == self._total:
            self._last_line = now
            text = " ".join(f"{k} {v}" for k, v in fields.items())
            print(f"step {step}/{self._total} {text}", file=self.stream, flush=True)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _fields(metrics: dict[str, float]) -> dict[str, str]:
    shown = {"loss": f"{metrics['train/loss']:.4f}"}
    for name, value in metrics.items():
        if name.endswith("_per_s"):
            unit = name.removeprefix("train/").removesuffix("_per_s")
            shown[f"{unit}/s"] = f"{value:,.0f}"
    return shown


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
