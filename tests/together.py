"""Running one piece of work in several threads released at the same moment (races)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_together(work: Callable[[], T], count: int = 3) -> list[T | Exception]:
    """Start `count` threads that wait at a barrier, then each call `work`; returns what each
    returned or the exception it raised, in the order they finished."""
    start = threading.Barrier(count)
    results: list[T | Exception] = []

    def run() -> None:
        start.wait()
        try:
            results.append(work())
        except Exception as error:  # the caller compares every outcome
            results.append(error)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results
