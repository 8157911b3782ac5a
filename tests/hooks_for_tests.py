"""Hooks that tests load through gin (`TrainConfig.hooks = ['tests.hooks_for_tests....']`)."""

from __future__ import annotations

import os
import signal

from craft.train.hooks import Hook, RunInfo


class InterruptAtStep3(Hook):
    """Acts as a Ctrl-C arriving during step 3."""

    def on_step_end(self, run: RunInfo, step: int, metrics: dict[str, float]) -> None:
        if step == 3:
            raise KeyboardInterrupt


class RecordSteps(Hook):
    """Writes the steps it saw, to check that user hooks run."""

    def on_step_end(self, run: RunInfo, step: int, metrics: dict[str, float]) -> None:
        with open(run.run_dir / "user_hook_steps.txt", "a") as handle:
            handle.write(f"{step}\n")


class TerminateAtStep3(Hook):
    """Sends this process a real SIGTERM during step 3, as a scheduler would (rank 0 only:
    other ranks run no user hooks, so they learn of it only through the ranks' agreement)."""

    def on_step_end(self, run: RunInfo, step: int, metrics: dict[str, float]) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)


class KillOtherRankAtStep3(Hook):
    """On rank 0 during step 3, SIGKILLs its sibling rank (the other child of the torchrun
    agent), as a crash or the OOM killer would."""

    def on_step_end(self, run: RunInfo, step: int, metrics: dict[str, float]) -> None:
        if step != 3:
            return
        agent, me = os.getppid(), os.getpid()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent == agent:
                os.kill(int(entry), signal.SIGKILL)
