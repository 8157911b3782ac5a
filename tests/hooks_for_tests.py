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
