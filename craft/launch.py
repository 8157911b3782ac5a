"""Running what the gin files configure: the task's data, the setup, the trackers, `fit`.

Under torchrun every process runs this; rank 0 prepares the data, writes the run folder and
tracks the run. Every process leaves its process group before it returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from craft import distributed
from craft.checkpoint import list_checkpoints
from craft.checkpoint import resolve as resolve_checkpoint
from craft.errors import ConfigError
from craft.runs import RunConfig, create_run_dir, write_effective_config
from craft.summaries import print_summary
from craft.tasks import TASKS
from craft.tracking import MetricsConfig, TrackingHook, make_trackers
from craft.train.config import TrainConfig
from craft.train.hooks import Hook
from craft.train.loop import fit, make_setup


def train(configs: dict[str, BaseModel], resume: str | None = None) -> dict[str, Any]:
    """Train the configured task; returns the summary (its "status" says how it ended)."""
    run_cfg, train_cfg = _get(configs, RunConfig), _get(configs, TrainConfig)
    task_cls = TASKS[run_cfg.task]
    world = distributed.world_from_env()
    checkpoint_path = resume_from(resume, run_cfg) if resume else None
    distributed.init(world, timeout_s=train_cfg.dist_timeout_s)
    finished = False
    try:
        # Rank 0 fetches and prepares the data; the others then find it cached.
        report = task_cls.prepare(configs) if world.main else None
        distributed.barrier()
        task = task_cls.open(configs)
        setup = make_setup(configs, task, seed=run_cfg.seed)
        if checkpoint_path is not None:
            run_dir = checkpoint_path.parent.parent
        elif world.main:
            run_dir = create_run_dir(run_cfg)
        else:  # other ranks write nothing: a name for messages only
            run_dir = Path(run_cfg.output_dir) / run_cfg.name / f"rank-{world.rank}"
        hooks: list[Hook] = []
        if world.main:
            print(report)
            write_effective_config(run_dir, configs.values())  # as given: config.gin reruns
            used = {name: cfg.model_dump(mode="json") for name, cfg in setup.configs.items()}
            trackers = make_trackers(_get(configs, MetricsConfig), run_dir, used)
            # Previews first: their images reach the trackers before these finish.
            hooks = [*task.previews(trackers, train_cfg.sample_every), TrackingHook(trackers)]
        summary = fit(setup, run_dir, hooks=hooks, resume=checkpoint_path, world=world)
        if world.main:
            print_summary(summary)
        finished = summary["status"] == "finished"
        return summary
    finally:
        distributed.shutdown(wait=finished)


def resume_from(spec: str, run_cfg: RunConfig) -> Path:
    """The checkpoint to resume: `latest` is the newest in this experiment's newest run."""
    if spec != "latest":
        return resolve_checkpoint(spec)
    runs = sorted((Path(run_cfg.output_dir) / run_cfg.name).glob("*/*/checkpoints"))
    for checkpoints in reversed(runs):
        if list_checkpoints(checkpoints):
            return resolve_checkpoint("latest", checkpoints)
    raise ConfigError(
        f"--resume=latest: no checkpoint under {Path(run_cfg.output_dir) / run_cfg.name}"
    )


def _get(configs: dict[str, BaseModel], kind: type[Any]) -> Any:
    found = configs[kind.__name__]
    assert isinstance(found, kind)
    return found
