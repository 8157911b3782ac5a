"""Measuring training memory: the peak of live memory above a level.

On a GPU that is the CUDA allocator's own peak (`max_memory_allocated`); on a CPU the live
heap, glibc's mallinfo2 (bytes malloc handed out and not taken back: unlike the resident set,
it drops when tensors are freed), sampled by a thread. The memory planner's probe and the
benchmarks measure with it.
"""

from __future__ import annotations

import ctypes
import gc
import threading
import time
from collections.abc import Callable
from typing import cast

import torch


class PeakMemory:
    """The peak of live memory above the level at entry: on a GPU the CUDA allocator's own
    peak; on a CPU the live heap (glibc's mallinfo2), sampled every 0.5 ms by a thread, as
    `benchmarks/train_step.py` measures it. `available`: False where neither can be read."""

    def __init__(self, device: torch.device, base: int | None = None):
        """`base`: measure from this level (`PeakMemory.level`) instead of the one at entry."""
        self.device, self.base = device, base
        self.peak = 0
        self.available = device.type == "cuda" or _mallinfo2() is not None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        elif self.available:
            self._start = self._high = live_heap_bytes()
        if self.base is not None:
            self._start = self.base
        if self.device.type != "cuda" and self.available:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    @staticmethod
    def level(device: torch.device) -> int:
        """Live bytes now (the CUDA allocator's on a GPU, the heap on a CPU)."""
        gc.collect()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            return torch.cuda.memory_allocated(device)
        return live_heap_bytes()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._high = max(self._high, live_heap_bytes())
            time.sleep(0.0005)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._start
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._high, live_heap_bytes()) - self._start


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost",
    )]  # fmt: skip


def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    try:
        function = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):  # not glibc (macOS, musl), or glibc before 2.33
        return None
    function.restype = _MallInfo2
    return cast(Callable[[], _MallInfo2], function)


def live_heap_bytes() -> int:
    """Bytes malloc has handed out and not taken back (in use, arenas and mmapped blocks)."""
    read = _mallinfo2()
    assert read is not None, "live_heap_bytes needs glibc's mallinfo2"
    info = read()
    return int(info.uordblks + info.hblkhd)
