"""Weights & Biases, offline by default: no account and no network needed.

W&B's own files (cache, staging, offline run) stay inside the run folder; `wandb sync` the
`wandb/` folder later to upload. A failure to start warns once and the run goes on.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from craft.tracking.base import Tracker, one_line, warn

WANDB_ID_FILE = "wandb_id.txt"


class WandbTracker(Tracker):
    """Logs to a W&B run in `run_dir` (resumed when the folder already has one)."""

    def __init__(
        self, run_dir: Path, *, mode: str, project: str, config: dict[str, Any], every: int = 10,
        group: str | None = None,
    ):  # fmt: skip
        self.run_dir, self.mode, self.project, self.config = Path(run_dir), mode, project, config
        self.group = group
        self.every = every
        self._run: Any = None
        self._samples: dict[str, list[list[Any]]] = {}  # W&B tables are replaced, not appended
        self._env_set: list[str] = []  # environment variables we set, to undo at the end

    def start(self, run: Any) -> None:
        self._set_env("WANDB_SILENT", "true")
        # Logs and artifact staging go under ~/.cache and ~/.local by default: keep them here.
        self._set_env("WANDB_CACHE_DIR", str(self.run_dir / "wandb" / "cache"))
        self._set_env("WANDB_DATA_DIR", str(self.run_dir / "wandb" / "data"))
        if self.mode == "offline":
            # Only offline: online needs the user's ~/.config/wandb settings (their server).
            self._set_env("WANDB_CONFIG_DIR", str(self.run_dir / "wandb" / "config"))
        try:
            import wandb

            id_file = self.run_dir / WANDB_ID_FILE
            if id_file.is_file():
                run_id = id_file.read_text(encoding="utf-8").strip()
            else:
                run_id = secrets.token_hex(4)  # W&B ids: lowercase letters and digits
                id_file.write_text(run_id + "\n", encoding="utf-8")
            self._run = wandb.init(
                project=self.project,
                group=self.group,
                name="/".join(self.run_dir.resolve().parts[-3:]),
                dir=str(self.run_dir),
                mode=self.mode,  # type: ignore[arg-type]
                config=self.config,
                id=run_id,
                resume="allow",
                # Console capture wraps every write to stderr and the system monitor samples in
                # the background: together they slowed a small model's step 5x on 2 cores.
                settings=wandb.Settings(console="off", x_disable_stats=True),
            )
        except Exception as error:
            warn(f"W&B did not start ({one_line(error)}); continuing without it")
            self._run = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._log(dict(metrics), step)

    def log_text(self, name: str, text: str, step: int) -> None:
        if self._run is None:
            return
        import wandb

        rows = self._samples.setdefault(name, [])
        rows.append([step, text])
        self._log({name: wandb.Table(columns=["step", "text"], data=list(rows))}, step)

    def log_image(self, name: str, png: Path, step: int) -> None:
        if self._run is None:
            return
        import wandb

        self._log({name: wandb.Image(str(png))}, step)

    def finish(self) -> None:
        if self._run is not None:
            try:
                import wandb

                self._run.finish()
                # Stop W&B's background service too: it keeps the environment it started with,
                # so the next run in this process would log into this run's folder.
                wandb.teardown()
            except Exception as error:
                warn(f"W&B did not finish cleanly ({one_line(error)})")
            self._run = None
        for name in self._env_set:
            os.environ.pop(name, None)
        self._env_set.clear()

    def _log(self, values: dict[str, Any], step: int) -> None:
        if self._run is None:
            return
        try:
            self._run.log(values, step=step)
        except Exception as error:
            warn(f"W&B logging failed ({one_line(error)}); continuing without it")
            self._run = None

    def _set_env(self, name: str, value: str) -> None:
        if name not in os.environ:  # a value the user set wins
            os.environ[name] = value
            self._env_set.append(name)


def wandb_mode(configured: str | None) -> str:
    """The configured mode, else WANDB_MODE, else "offline"."""
    return configured or os.environ.get("WANDB_MODE") or "offline"
