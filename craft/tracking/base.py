"""The tracker interface and a fan-out over several trackers.

Metric names are grouped the way W&B sections them: `train/loss`, `val/loss`, `test/accuracy`.
A tracker's own failure never stops a run: `Trackers` turns it into one warning and goes on
without it. A full disk does stop it, with a clear message, as the next checkpoint would fail.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from craft.files import is_out_of_space, out_of_space


class Tracker:
    """Receives a run's metrics; every method does nothing unless a subclass overrides it."""

    every: int = 1
    """Train metrics reach this tracker every `every` steps (and at the last step)."""

    def start(self, run: Any) -> None:
        """Before the first step (`run`: the loop's RunInfo)."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Numbers at `step`, named `section/name`."""

    def log_text(self, name: str, text: str, step: int) -> None:
        """A text (a sample) at `step`."""

    def log_image(self, name: str, png: Path, step: int) -> None:
        """A PNG file (a grid of predictions) at `step`."""

    def finish(self) -> None:
        """After the run: flush and close."""

    def status(self, text: str) -> None:
        """What the run is doing now, until the next step (e.g. compiling the step)."""


class Trackers(Tracker):
    """Several trackers as one; a tracker that raises is warned about once and dropped, except
    when the disk is full, which stops the run (`DiskFullError`)."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = list(trackers)

    def start(self, run: Any) -> None:
        self._each("start", run)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._each("log", metrics, step)

    def log_text(self, name: str, text: str, step: int) -> None:
        self._each("log_text", name, text, step)

    def log_image(self, name: str, png: Path, step: int) -> None:
        self._each("log_image", name, png, step)

    def finish(self) -> None:
        self._each("finish")

    def status(self, text: str) -> None:
        self._each("status", text)

    def log_train(self, metrics: dict[str, float], step: int, last: bool) -> None:
        """Train metrics to each tracker whose `every` divides `step` (all at the last step)."""
        for tracker in list(self.trackers):
            if last or step % tracker.every == 0:
                self._call(tracker, "log", metrics, step)

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            self._call(tracker, method, *args)

    def _call(self, tracker: Tracker, method: str, *args: Any) -> None:
        try:
            getattr(tracker, method)(*args)
        except Exception as error:
            if is_out_of_space(error):
                # Not a tracker's problem: the next checkpoint would fail too. Stop the run.
                raise out_of_space(getattr(tracker, "path", Path("metrics")), None, error) from None
            warn(
                f"{type(tracker).__name__}.{method} failed ({one_line(error)}); going on without it"
            )
            self.trackers.remove(tracker)


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def warn(message: str) -> None:
    print(f"craft: warning: {message}", file=sys.stderr)
