"""Stopping a run cleanly when the system asks: SIGTERM is acted on between steps.

Cluster schedulers and torchrun send SIGTERM some seconds before they kill a process. A run
notes it, finishes the step it is in, saves a checkpoint and its summary, and exits 143, as
Ctrl-C does with 130. Under torchrun the ranks agree first (one small sum per step), so they
all stop after the same step and a sharded optimizer state can still be gathered.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import torch

from craft import distributed


class Stopped(Exception):  # noqa: N818 (a request, not an error)
    """Raised inside the loop once the ranks agree to stop; carries the signal's name."""


class StopSignal:
    """Notes SIGTERM while installed (only the main thread may install signal handlers).

    The CLI keeps one installed for the whole command, so a SIGTERM that arrives while a run
    prepares its data, or while it saves and reports after it stopped, cannot kill it midway.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self.alone = False
        """True when the ranks could not agree (another rank is gone): this rank stops alone."""
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> StopSignal:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._note)
            self._installed = True

    def restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name

    def check(self, world: distributed.World, device: torch.device) -> None:
        """Raise `Stopped` when this rank, or under torchrun any rank, was asked to stop."""
        asked = self.received is not None
        if world.size > 1:
            try:
                asked = distributed.any_rank(asked, device)
            except distributed.RankLostError:
                if not asked:
                    raise
                self.alone = True  # a rank is gone; stop with what this rank holds
        if asked:
            raise Stopped(self.received or "SIGTERM")
