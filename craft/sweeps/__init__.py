"""Sweeps: many configurations of one set of gin files, each an ordinary run, then a report.

`space` reads the `--grid` and `--range` flags and expands them; `engine` validates and runs;
`manifest` is the sweep's record (`sweep.json`); `report` writes the summary and curves.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from craft import config
from craft.errors import ConfigError
from craft.runs import RunConfig
from craft.sweeps import engine
from craft.sweeps.engine import SweepResult
from craft.sweeps.manifest import Manifest
from craft.sweeps.report import write_report
from craft.sweeps.space import check_whole, expand, parse_grid, parse_range

DEFAULT_PARALLEL = 2
"""Runs at once. Measured on 2 cores with the 1M ChatGOT config: two runs of one thread each
finish a sweep sooner than one run at a time with two threads (benchmarks/RESULTS.md)."""

__all__ = ["DEFAULT_PARALLEL", "SweepResult", "sweep"]


def sweep(
    gin_files: list[str], gin_params: list[str], *, grid: list[str], ranges: list[str],
    draws: int | None, parallel: int, name: str | None, resume: str | None, seed: int,
    output_dir: str, say: Callable[[str], None] = print, run_limit_s: float | None = None,
) -> SweepResult:  # fmt: skip
    """Plan (or reload), validate, run and report a sweep; see `craft.main sweep --help`."""
    engine.check_parallel(parallel)
    engine.check_run_limit(run_limit_s)
    where = config.build(
        RunConfig, {"name": name if name is not None else _run_name(), "output_dir": output_dir},
        flag_names={"name": "name", "output_dir": "output_dir"},
    )  # fmt: skip
    name, output_dir = where.name, where.output_dir
    if resume is not None:
        if grid or ranges or draws is not None or gin_params:
            raise ConfigError(
                "a resumed sweep runs the configs, grid and draws it was started with: leave "
                "out --grid, --range, --random and gin params (--gin.X=..., --gin_param)"
            )
        sweep_dir = _locate(resume, output_dir, name)
        manifest = Manifest.load(sweep_dir)
        if gin_files and list(gin_files) != manifest.gin_files:
            say(f"sweep: resuming {sweep_dir} with its own gin files "
                f"({', '.join(manifest.gin_files)}); those given only named it")  # fmt: skip
        if run_limit_s is None:  # the limit it was started with, unless another is given
            run_limit_s = manifest.flags.get("run_limit_s")
    else:
        check_whole("seed", seed, 0)
        axes = [parse_grid(flag) for flag in grid]
        drawn = [parse_range(flag) for flag in ranges]
        bindings = expand(axes, drawn, draws, seed)
        flags: dict[str, object] = {
            "grid": list(grid),
            "range": list(ranges),
            "random": draws,
            "seed": seed,
            "run_limit_s": run_limit_s,
        }
        manifest = engine.plan(name, gin_files, gin_params, bindings, flags)
    engine.validate(manifest)
    if resume is None:
        sweep_dir = engine.new_sweep_dir(output_dir, manifest.name)
        manifest.save(sweep_dir)
    group = "/".join([manifest.name, *sweep_dir.resolve().parts[-2:]])
    try:
        result = engine.execute(
            manifest, sweep_dir, parallel=parallel, group=group, say=say, run_limit_s=run_limit_s
        )
    finally:
        for path in write_report(sweep_dir):
            say(str(path))
    failed = [run for run in result.manifest.runs if run.status == "failed"]
    if failed:
        say(f"sweep: {len(failed)} of {len(manifest.runs)} runs failed: "
            + ", ".join(run.label for run in failed))  # fmt: skip
    return result


def _run_name() -> str:
    try:
        return config.build(RunConfig).name
    except ConfigError:
        return RunConfig().name


def _locate(resume: object, output_dir: str, name: str) -> Path:
    if resume == "latest":
        return engine.latest_sweep(output_dir, name)
    if not isinstance(resume, str) or not resume:
        raise ConfigError("--resume needs a value: latest, or a sweep folder")
    return Path(resume)
