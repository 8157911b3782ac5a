"""Running what the gin files configure: the task's data, the setup, the trackers, `fit`.

Under torchrun every process runs this; rank 0 prepares the data, writes the run folder and
tracks the run. Every process leaves its process group before it returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from craft import config, distributed
from craft import resume as resuming
from craft.errors import ConfigError
from craft.files import holds_files
from craft.resume import Resumption
from craft.runs import RunConfig, create_run_dir, write_effective_config
from craft.summaries import print_summary, write_summary
from craft.tasks import TASKS
from craft.tracking import MetricsConfig, TrackingHook, make_trackers
from craft.train import memory
from craft.train.config import TrainConfig
from craft.train.hooks import Hook
from craft.train.loop import find_hook, fit, make_setup, run_device
from craft.train.stop import StopSignal


def train(
    configs: dict[str, BaseModel], resume: str | None = None, *,
    resume_with_changes: bool = False, run_dir: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Train the configured task; returns the summary (its "status" says how it ended), also
    written as `summary.json` in the run folder.

    `resume`: `latest`, a checkpoint file or a folder; see `craft.resume` for what is checked.
    `run_dir`: the folder of a new run (it must be new or empty); default: a fresh
    `<output_dir>/<name>/<date>/<time>/`.
    """
    run_cfg, train_cfg = _get(configs, RunConfig), _get(configs, TrainConfig)
    world = distributed.world_from_env()
    if run_dir is not None and world.main:  # rank 0 alone writes it
        check_new_run_dir(run_dir)
    resumption = None
    if resume is not None:
        resumption = resuming.locate(resume, Path(run_cfg.output_dir) / run_cfg.name)
        if not resuming.check_steps(resumption, train_cfg.steps):
            if world.main:
                print(
                    f"craft: {resumption.path} already finished its {resumption.meta.step} "
                    "steps; nothing to do (raise TrainConfig.steps to train further)"
                )
            return {"status": "finished", "steps": resumption.meta.step, "note": "nothing to do"}
    # Held for the whole run: a SIGTERM while the data is prepared, or while a stopped run saves
    # and reports, is noted instead of killing the process midway.
    with StopSignal() as stop:
        return _train(
            configs, world, resumption, stop, resume_with_changes=resume_with_changes,
            run_dir=run_dir,
        )  # fmt: skip


def _train(
    configs: dict[str, BaseModel], world: distributed.World, resumption: Resumption | None,
    stop: StopSignal, *, resume_with_changes: bool, run_dir: Path | None,
) -> dict[str, Any]:  # fmt: skip
    run_cfg, train_cfg = _get(configs, RunConfig), _get(configs, TrainConfig)
    task_cls = TASKS[run_cfg.task]
    for path in train_cfg.hooks:  # a bad path fails now, not after the data is prepared
        find_hook(path)
    distributed.init(world, timeout_s=train_cfg.dist_timeout_s)
    finished = False
    try:
        # Rank 0 fetches and prepares the data; the others then find it cached.
        report = task_cls.prepare(configs) if world.main else None
        distributed.barrier()
        task = task_cls.open(configs, verified=True)  # rank 0's prepare checked it just now
        # The planned accum_steps and remat are what trains and what config.gin records.
        configs, plan = memory.plan_run(
            configs, task, device=run_device(train_cfg.device, world.local_rank), world=world,
            seed=run_cfg.seed,
        )  # fmt: skip
        if plan is not None and world.main:
            print(plan.describe(), flush=True)
        setup = make_setup(configs, task, seed=run_cfg.seed)
        used = {name: cfg.model_dump(mode="json") for name, cfg in setup.configs.items()}
        changes = (
            resuming.check_changes(
                resumption,
                used,
                steps=train_cfg.steps,
                allow=resume_with_changes,
                task_meta=task.checkpoint_meta(),
            )
            if resumption is not None
            else []
        )
        run_dir = _run_dir(run_cfg, world, resumption, run_dir)
        hooks: list[Hook] = []
        if world.main:
            print(report)
            _record_config(run_dir, configs, resumption, changes)
            if resumption is not None and resumption.run_dir == run_dir:
                moved = resuming.set_aside_later(resumption)
                if moved:
                    print(
                        f"craft: resuming from step {resumption.meta.step}; the later checkpoints "
                        f"are set aside as {', '.join(p.name for p in moved)}"
                    )
            trackers = make_trackers(_get(configs, MetricsConfig), run_dir, used)
            # Previews first: their images reach the trackers before these finish.
            hooks = [*task.previews(trackers, train_cfg.sample_every), TrackingHook(trackers)]
        resume_path = resumption.path if resumption is not None else None
        summary = fit(setup, run_dir, hooks=hooks, resume=resume_path, world=world, stop=stop)
        if world.main:
            write_summary(run_dir, summary)
            print_summary(summary)
        finished = summary["status"] == "finished"
        return summary
    finally:
        distributed.shutdown(wait=finished)


def _run_dir(
    run_cfg: RunConfig, world: distributed.World, resumption: Resumption | None,
    given: Path | None,
) -> Path:  # fmt: skip
    """The run folder: the checkpoint's own when resuming one kept in a run folder, else the
    one given, else new."""
    if resumption is not None and resumption.run_dir is not None:
        return resumption.run_dir
    if not world.main:  # other ranks write nothing: a name for messages only
        return Path(run_cfg.output_dir) / run_cfg.name / f"rank-{world.rank}"
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        return given
    run_dir = create_run_dir(run_cfg)
    if resumption is not None:
        print(
            f"craft: {resumption.path} is not inside a run folder; the continuation goes to "
            f"a new run folder, {run_dir}"
        )
    return run_dir


def _record_config(
    run_dir: Path, configs: dict[str, BaseModel], resumption: Resumption | None,
    changes: list[str],
) -> None:  # fmt: skip
    """config.gin for a new run (as given: it reruns the run); a resumed run keeps it and
    writes a segment `config.step-N.gin` when its config differs."""
    if resumption is None or not (run_dir / "config.gin").is_file():
        write_effective_config(run_dir, configs.values())
        return
    if changes:
        segment = run_dir / resuming.segment_name(resumption.meta.step)
        segment.write_text(config.to_gin(configs.values()), encoding="utf-8")
        print(
            f"craft: config changed at step {resumption.meta.step} (recorded in {segment.name}):"
            + "".join(f"\n  {line}" for line in changes)
        )


def check_new_run_dir(run_dir: Path) -> None:
    """A folder a new run may be written into: absent, or an empty folder."""
    if holds_files(run_dir):
        raise ConfigError(
            f"--run_dir={run_dir} already holds files: give a new folder, or continue the run "
            f"that is there with --resume={run_dir}"
        )


def _get(configs: dict[str, BaseModel], kind: type[Any]) -> Any:
    found = configs[kind.__name__]
    assert isinstance(found, kind)
    return found
