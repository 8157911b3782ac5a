"""Run settings and the run directory: `<output_dir>/<name>/<YYYY-MM-DD>/<HH-MM-SS>/`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from craft import config
from craft.config import configurable


@configurable
class RunConfig(BaseModel):
    """What a run is called and where its outputs go."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str = Field("craft", min_length=1, pattern=r"^[\w.-]+$")
    """The experiment name: a folder name (letters, digits, '_', '-', '.')."""
    task: str = "lm"
    """What kind of training: a registered task (craft.tasks.TASKS: lm, classify, diffusion)."""
    output_dir: str = "outputs/experiments"
    seed: int = Field(0, ge=0)
    init_from: str | None = Field(None, min_length=1)
    """Start from the params of this Craft checkpoint (a file, or a run folder: its newest),
    one a run wrote or an imported model, instead of a fresh init: a fine-tuning run. It
    starts at step 0 with a fresh optimizer; the model configured must have the same params
    (dropout and other fields that shape none may differ). `--resume` goes before it."""

    @field_validator("task")
    @classmethod
    def _registered_task(cls, name: str) -> str:
        from craft.tasks import TASKS  # tasks sit above this module: looked up when validating

        if name not in TASKS:
            raise ValueError(config.unknown_name("task", name, TASKS))
        return name


def create_run_dir(run: RunConfig, now: dt.datetime | None = None) -> Path:
    """Make a fresh run folder; a second run in the same second gets a `-1`, `-2`... suffix."""
    now = now or dt.datetime.now()
    base = Path(run.output_dir) / run.name / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S")
    candidate, n = base, 0
    while True:
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            n += 1
            candidate = base.with_name(f"{base.name}-{n}")


def write_effective_config(run_dir: Path, configs: Iterable[BaseModel]) -> None:
    """Write `config.gin` (re-runnable) and `config.json` beside the run's outputs."""
    configs = list(configs)
    (run_dir / "config.gin").write_text(config.to_gin(configs), encoding="utf-8")
    (run_dir / "config.json").write_text(config.to_json(configs) + "\n", encoding="utf-8")
