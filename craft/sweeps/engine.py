"""Running a sweep: every run validated first, then each one an ordinary `craft.main run` in
its own process, `parallel` at a time with the CPU threads split between them.

A sweep lives in `<output_dir>/<name>/<YYYY-MM-DD>/<HH-MM-SS>/`: `sweep.json` (the manifest),
one folder per run (an ordinary run folder: config.gin, checkpoints, logs, summary.json) and
`logs/<run>.log` (the run's own output). A run that crashes or diverges is marked failed and
the others go on; `--resume` runs what is not finished, continuing from checkpoints.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from craft import config
from craft.checkpoint import list_checkpoints
from craft.errors import ConfigError
from craft.optim import Schedule
from craft.runs import RunConfig, create_run_dir
from craft.sweeps.manifest import Manifest, SweepRun, run_label
from craft.sweeps.space import check_whole
from craft.train.config import TrainConfig
from craft.train.loop import find_hook

ERROR_LINES = 15
"""How much of a failed run's output the manifest and the sweep's message keep."""


@dataclass(frozen=True)
class SweepResult:
    sweep_dir: Path
    manifest: Manifest


def plan(
    name: str, gin_files: list[str], gin_params: list[str], bindings: list[dict[str, str]],
    flags: dict[str, object],
) -> Manifest:  # fmt: skip
    """The manifest of a new sweep: a labelled run per set of bindings."""
    width = len(str(len(bindings) - 1))
    runs = [SweepRun(run_label(i, b, width), b) for i, b in enumerate(bindings)]
    return Manifest(name, list(gin_files), list(gin_params), flags, runs)


def validate(manifest: Manifest) -> None:
    """Parse and validate every run's config as a single run would, before any starts: one bad
    name or value fails the whole sweep with the run's own message."""
    problems = []
    for run in manifest.runs:
        try:
            config.parse(manifest.gin_files, [*manifest.gin_params, *_flags(run)])
            built = config.build_all()
            # What a run checks before its data is read: the schedule against the run's
            # length, and that its hooks import.
            train = built[TrainConfig.__name__]
            schedule = built[Schedule.__name__]
            assert isinstance(train, TrainConfig) and isinstance(schedule, Schedule)
            schedule.for_run(train.steps)
            for path in train.hooks:
                find_hook(path)
        except ConfigError as error:
            problems.append(f"run {run.label}: {error}")
    config.reset()
    if problems:
        # The same mistake in every run reads once.
        first = problems[0].split(": ", 1)[1]
        if len(problems) == len(manifest.runs) and all(
            p.split(": ", 1)[1] == first for p in problems
        ):
            raise ConfigError(f"every run of the sweep: {first}")
        raise ConfigError("\n".join(problems))


def new_sweep_dir(output_dir: str, name: str) -> Path:
    """`<output_dir>/<name>/<date>/<time>/`, made fresh (as a run folder is)."""
    return create_run_dir(RunConfig(name=name, output_dir=output_dir), dt.datetime.now())


def latest_sweep(output_dir: str, name: str) -> Path:
    """The newest sweep folder of `name` that holds a manifest."""
    base = Path(output_dir) / name
    found = sorted(p.parent for p in base.glob("*/*/sweep.json"))
    if not found:
        raise ConfigError(f"--resume=latest: no sweep named {name!r} in {base}")
    return found[-1]


def execute(
    manifest: Manifest, sweep_dir: Path, *, parallel: int, group: str,
    say: Callable[[str], None] = print, cpus: int | None = None,
    run_limit_s: float | None = None,
) -> SweepResult:  # fmt: skip
    """Run every unfinished run, `parallel` at a time; returns when all have ended.

    A Ctrl-C reaches the runs too (one process group): each saves a checkpoint and the sweep
    marks it interrupted, so `--resume` continues it. A SIGTERM to the sweep is passed on to
    its runs, with the same effect. `run_limit_s`: a run still going after that many seconds
    gets a SIGTERM (it saves and stops) and is marked stopped; `--resume` continues it. One
    process at a time runs a sweep folder (a lock file): a second is refused.
    """
    check_parallel(parallel)
    check_run_limit(run_limit_s)
    with _SweepLock(sweep_dir):
        todo = [run for run in manifest.runs if not _finished(run, sweep_dir)]
        skipped = len(manifest.runs) - len(todo)
        threads = max(1, (cpus or _cpu_count()) // min(parallel, max(len(todo), 1)))
        say(
            f"sweep {sweep_dir}: {len(manifest.runs)} runs"
            + (f", {skipped} already finished" if skipped else "")
            + f"; {parallel} at a time, {threads} CPU thread{'s' * (threads > 1)} each"
        )
        (sweep_dir / "logs").mkdir(exist_ok=True)
        runner = _Runner(manifest, sweep_dir, group, threads, run_limit_s, say, skipped)
        runner.run(todo, parallel)
    return SweepResult(sweep_dir, manifest)


class _Runner:
    """The worker threads, the live processes and the manifest they share (under one lock)."""

    def __init__(
        self, manifest: Manifest, sweep_dir: Path, group: str, threads: int,
        limit_s: float | None, say: Callable[[str], None], done: int,
    ):  # fmt: skip
        self.manifest, self.sweep_dir, self.group = manifest, sweep_dir, group
        self.threads, self.limit_s, self.say, self.done = threads, limit_s, say, done
        # Re-entrant: the SIGTERM handler runs on the main thread, which may hold it.
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.live: set[subprocess.Popen[bytes]] = set()
        self.queue: list[SweepRun] = []

    def run(self, todo: list[SweepRun], parallel: int) -> None:
        self.queue = list(todo)
        previous = _handle(signal.SIGTERM, self._on_sigterm)  # before any run starts
        workers = [threading.Thread(target=self._worker, daemon=True) for _ in range(parallel)]
        try:
            for thread in workers:
                thread.start()
            for thread in workers:
                while thread.is_alive():
                    thread.join(0.2)
        except KeyboardInterrupt:
            self.stopping.set()
            for thread in workers:  # the runs got the Ctrl-C too: let them save and end
                thread.join()
            raise
        finally:
            _handle(signal.SIGTERM, previous)
            with self.lock:
                for run in self.manifest.runs:  # a run that never started stays pending
                    if run.status == "running":
                        run.status = "interrupted"
                self.manifest.save(self.sweep_dir)

    def _worker(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                if not self.queue:
                    return
                run = self.queue.pop(0)
                run.status = "running"
                self.manifest.save(self.sweep_dir)
            if not self._run_one(run):
                with self.lock:
                    run.status = "pending"  # the sweep stopped before it began
                return
            with self.lock:
                self.done += 1
                self.manifest.save(self.sweep_dir)
                self.say(_outcome(run, self.done, len(self.manifest.runs), self.sweep_dir))
                if run.status == "interrupted":
                    self.stopping.set()

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.stopping.set()
        with self.lock:
            for process in self.live:
                process.send_signal(signal.SIGTERM)

    def _run_one(self, run: SweepRun) -> bool:
        """One run in its own process, continued from its checkpoint when it has one; False
        when the sweep is stopping and the run was not started."""
        run_dir = self.sweep_dir / run.label
        resume = run_dir.is_dir() and bool(list_checkpoints(run_dir / "checkpoints"))
        if run_dir.exists() and not resume:
            shutil.rmtree(run_dir)  # ended before its first checkpoint: start it again
        command = [
            sys.executable, "-m", "craft.main", "run",
            f"--resume={run_dir}" if resume else f"--run_dir={run_dir}",
            *[f"--gin_file={f}" for f in self.manifest.gin_files],
            *[f"--gin_param={p}" for p in self.manifest.gin_params],
            *_flags(run),
            f"--gin.MetricsConfig.wandb_group={self.group!r}",
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads),
               "TORCHINDUCTOR_COMPILE_THREADS": str(self.threads)}  # fmt: skip
        log_path = self.sweep_dir / "logs" / f"{run.label}.log"
        started = time.perf_counter()
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            with self.lock:  # a SIGTERM now either finds the process or stops the start
                if self.stopping.is_set():
                    return False
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
                self.live.add(process)
            timed_out = False
            while True:
                try:
                    if timed_out or self.limit_s is None:
                        code = process.wait()
                    else:
                        left = self.limit_s - (time.perf_counter() - started)
                        code = process.wait(timeout=max(left, 0.0))
                    break
                except subprocess.TimeoutExpired:
                    timed_out = True
                    process.send_signal(signal.SIGTERM)  # it saves, then stops
            with self.lock:
                self.live.discard(process)
        run.exit_code = code
        run.seconds = round((run.seconds or 0.0) + time.perf_counter() - started, 1)
        _record(run, code, timed_out=timed_out, limit_s=self.limit_s, run_dir=run_dir,
                log_path=log_path)  # fmt: skip
        return True


def _record(run: SweepRun, code: int, *, timed_out: bool, limit_s: float | None,
            run_dir: Path, log_path: Path) -> None:  # fmt: skip
    """The run's status and error from how its process ended."""
    stopped_codes = (128 + signal.SIGTERM, -signal.SIGTERM)
    if code == 0:
        run.status, run.error = "finished", None
    elif timed_out and code in stopped_codes:
        run.status = "stopped"
        saved = bool(list_checkpoints(run_dir / "checkpoints"))
        run.error = (
            f"stopped at its time limit ({limit_s:g} s) after a save; --resume continues it"
            if saved
            else f"stopped at its time limit ({limit_s:g} s) before its first checkpoint: "
            "nothing saved, so --resume starts it again (a longer --run_limit_s lets it train)"
        )
    elif code in (128 + signal.SIGINT, -signal.SIGINT, *stopped_codes):
        run.status, run.error = "interrupted", None
    elif code < 0:
        run.status = "failed"
        run.error = f"killed by {signal.Signals(-code).name} (out of memory?)\n" + _tail(log_path)
    else:
        run.status = "failed"
        run.error = _tail(log_path)


class _SweepLock:
    """An exclusive lock on a sweep folder for as long as a process runs it."""

    def __init__(self, sweep_dir: Path):
        self.path = sweep_dir / "sweep.lock"
        self.file: Any = None

    def __enter__(self) -> _SweepLock:
        import fcntl

        self.file = open(self.path, "a")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise ConfigError(
                f"{self.path.parent} is being run by another process (it holds "
                f"{self.path.name}): wait for it to end, or stop it first"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()  # closing releases the lock


def check_parallel(parallel: object) -> None:
    """Refuse a --parallel that is not a whole number >= 1 (before any folder is made)."""
    check_whole("parallel", parallel, 1)


def check_run_limit(limit: object) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | float)
                              or not limit > 0):  # fmt: skip
        raise ConfigError(f"--run_limit_s must be a number of seconds > 0, got {limit!r}")


def _handle(signum: int, handler: Any) -> Any:
    """Install a signal handler where Python allows it (the main thread); returns the old."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signum, handler) if handler is not None else None


def _finished(run: SweepRun, sweep_dir: Path) -> bool:
    # A resumed run that was already done says "nothing to do" and writes no summary: its
    # folder is the evidence.
    return run.status == "finished" and (sweep_dir / run.label).is_dir()


def _flags(run: SweepRun) -> list[str]:
    return [f"--gin.{key}={value}" for key, value in run.bindings.items()]


def _outcome(run: SweepRun, done: int, total: int, sweep_dir: Path) -> str:
    line = f"sweep: [{done}/{total}] {run.label} {run.status} in {run.seconds:.0f} s"
    if run.status == "stopped":
        nothing = "nothing saved" in (run.error or "")
        line += " (its time limit; nothing saved)" if nothing else " (its time limit)"
    if run.status == "failed" and run.error:
        last = run.error.strip().splitlines()[-1]
        line += f" (exit {run.exit_code}: {last}; log: {sweep_dir / 'logs' / run.label}.log)"
    return line


def _tail(path: Path) -> str:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(lines[-ERROR_LINES:])


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
