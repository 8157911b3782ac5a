"""Resuming a run: which checkpoint, whether it may go on under this config, and where.

A resumed run must continue the one that wrote the checkpoint. So `--resume=latest` says which
run and checkpoint it takes (skipping an unreadable newest file with a warning), a finished run
is left alone, and a config that would change what is computed (batch size, lr, schedule,
seed, model...) is refused unless the user asks for it; accepted changes are written as a new
config segment beside the first. Settings of how a run is observed (evaluation, checkpointing,
samples, metrics, device, threads, compilation) may change freely.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from craft import checkpoint
from craft.checkpoint import CheckpointError, list_checkpoints
from craft.errors import ConfigError
from craft.optim import Schedule
from craft.train.meta import CheckpointMeta
from craft.train.meta import read as read_meta

FREE_TO_CHANGE: Mapping[str, frozenset[str] | None] = {
    # init_from is read only by a fresh run; a resumed one continues from its own checkpoint.
    "RunConfig": frozenset({"name", "output_dir", "init_from"}),
    "TrainConfig": frozenset(
        {
            "steps",
            "eval_every",
            "eval_batches",
            "eval_batch_size",
            "checkpoint_every",
            "keep_checkpoints",
            "sample_every",
            "sample_tokens",
            "sample_prompt",
            "device",
            "threads",
            "compile",
            "compile_mode",
            "compile_scope",
            # Micro-batches and recomputation change float rounding only (the loss is
            # normalised by the whole batch's weight; dropout keys follow global rows), as
            # compiling does: a budget may plan them differently on another machine.
            "memory_budget_mb",
            "accum_steps",
            "dist_timeout_s",
            "deterministic",
            "hooks",
        }
    ),
    "GPTConfig": frozenset({"remat"}),
    "MetricsConfig": None,  # None: every field
    "TextSampleConfig": None,
}
"""Fields that change how a run is watched or where it runs, not what it computes. Folders
(`data_dir`, `prepared_dir`) are free in every config: the data is found, not redirected."""

_FREE_EVERYWHERE = frozenset({"data_dir", "prepared_dir"})


@dataclass(frozen=True)
class Resumption:
    """A checked plan to continue from `path`, in `run_dir` (None: a new run folder)."""

    path: Path
    meta: CheckpointMeta
    run_dir: Path | None


def locate(spec: str, experiment_dir: Path) -> Resumption:
    """The checkpoint `--resume=spec` names: `latest` (this experiment's newest readable
    checkpoint), a checkpoint file, or a folder (its newest)."""
    if spec == "latest":
        path, meta = _latest(experiment_dir)
    else:
        path = checkpoint.resolve(spec)
        meta = _readable(path, latest=False)
    _refuse_derived(path, meta)
    return Resumption(path=path, meta=meta, run_dir=run_folder_of(path))


def run_folder_of(path: Path) -> Path | None:
    """The run folder holding `path` (`<run>/checkpoints/step-N.safetensors` beside the run's
    config.gin), or None for a checkpoint kept elsewhere (e.g. a download)."""
    folder = path.parent if path.parent.name else path.resolve().parent  # keep paths as given
    if folder.name == "checkpoints" and (folder.parent / "config.gin").is_file():
        return folder.parent
    return None


def check_steps(resumption: Resumption, steps: int) -> bool:
    """False when the checkpoint already reached `steps` (nothing to do); refuses fewer."""
    done = resumption.meta.step
    if done > steps:
        raise ConfigError(
            f"{resumption.path} is at step {done}, past TrainConfig.steps = {steps}: a resumed "
            f"run cannot go back; set TrainConfig.steps above {done} to train further"
        )
    return done < steps


def config_changes(
    stored: Mapping[str, Mapping[str, Any]], current: Mapping[str, Mapping[str, Any]]
) -> tuple[list[str], list[str]]:
    """(changes that alter the computation, free changes), each as `Class.field: old -> new`.

    Configs or fields present on one side only (written by another Craft version) are skipped.
    """
    binding: list[str] = []
    free: list[str] = []
    for name, fields in current.items():
        before = stored.get(name)
        if before is None:
            continue
        allowed = FREE_TO_CHANGE.get(name, frozenset())
        for field, value in fields.items():
            if field not in before or _same(before[field], value):
                continue
            line = f"{name}.{field}: {before[field]!r} -> {value!r}"
            is_free = allowed is None or field in allowed or field in _FREE_EVERYWHERE
            (free if is_free else binding).append(line)
    return binding, free


def check_changes(
    resumption: Resumption,
    current: Mapping[str, Mapping[str, Any]],
    *,
    steps: int,
    allow: bool,
    task_meta: Mapping[str, Any] | None = None,
) -> list[str]:
    """All the changes against the checkpoint's configs; refuses binding ones unless `allow`.

    A schedule whose fields changed but whose learning rate is the same at every step still to
    run (a constant lr given a new length) is not a binding change. `task_meta`: what the task
    records now (e.g. the prepared data's fingerprint); any difference from the checkpoint's
    record binds, so other data under the same config is caught too.
    """
    binding, free = config_changes(resumption.meta.configs, current)
    recorded = resumption.meta.task_meta
    for key, value in (task_meta or {}).items():
        if key in recorded and not _same(recorded[key], value):
            binding.append(f"the task's {key}: {_short(recorded[key])} -> {_short(value)}")
    in_schedule = [line for line in binding if line.startswith("Schedule.")]
    if in_schedule and _same_rates(
        resumption.meta.configs["Schedule"], current["Schedule"], resumption.meta.step, steps
    ):
        binding = [line for line in binding if line not in in_schedule]
        free += [f"{line} (the same learning rates)" for line in in_schedule]
    if binding and not allow:
        raise ConfigError(
            f"resuming {resumption.path} under a different config:\n  "
            + "\n  ".join(binding)
            + "\nthese change what the run computes, so it would no longer continue the same "
            "run; restore them, or pass --resume_with_changes to go on with them (they are "
            "recorded as a new config segment in the run folder)"
        )
    return binding + free


def _same_rates(before: Mapping[str, Any], after: Mapping[str, Any], start: int, end: int) -> bool:
    """Whether two schedules give the same lr at every step in [start, end)."""
    try:
        old, new = Schedule.model_validate(before), Schedule.model_validate(after)
    except ValueError:  # a schedule another Craft version wrote: treat it as changed
        return False
    steps = torch.arange(start, max(end, start + 1))
    return bool(torch.equal(old(steps), new(steps)))


def set_aside_later(resumption: Resumption) -> list[Path]:
    """Rename this run's checkpoints past the resumed one to `abandoned-step-N.safetensors`:
    they belong to the continuation being replaced, and `latest` (or pruning by val loss) must
    not pick one of them up later. Returns the new names."""
    moved = []
    for path in list_checkpoints(resumption.path.parent):
        if path.name > resumption.path.name:
            target = path.with_name(f"abandoned-{path.name}")
            path.replace(target)
            moved.append(target)
    return moved


def segment_name(step: int) -> str:
    """The config segment a resumed run with changes writes: `config.step-00000008.gin`."""
    return f"config.step-{step:08d}.gin"


def _latest(experiment_dir: Path) -> tuple[Path, CheckpointMeta]:
    runs = sorted(experiment_dir.glob("*/*/checkpoints"), key=lambda p: p.parent.as_posix())
    skipped: list[str] = []
    for folder in reversed(runs):
        for path in reversed(list_checkpoints(folder)):
            try:
                meta = _readable(path, latest=True)
            except CheckpointError as error:
                skipped.append(str(error))  # names the file
                continue
            for line in skipped:
                print(f"craft: warning: {line}; taking an older checkpoint", file=sys.stderr)
            print(f"craft: resuming {folder.parent} from {path.name} (step {meta.step})")
            return path, meta
    if skipped:
        raise CheckpointError("--resume=latest: no readable checkpoint; " + "; ".join(skipped[-3:]))
    raise ConfigError(f"--resume=latest: no checkpoint under {experiment_dir}")


def _refuse_derived(path: Path, meta: CheckpointMeta) -> None:
    """A quantized or pruned checkpoint holds a model, not a run: no optimizer state."""
    derived = (meta.model_extra or {}).get("derived")
    if not isinstance(derived, dict):
        return
    how = str(derived.get("by", "quantize"))
    source = derived.get("from", "the checkpoint it was made from")
    then = (
        f"resume from {source}, or fine-tune this one in a new run with "
        f"RunConfig.init_from={str(path)!r}"
        if how == "prune"
        else f"resume from {source}; evaluate and generate read this one"
    )
    raise ConfigError(
        f"--resume={path}: it was written by `craft.main {how}` and holds a model without "
        f"optimizer state, so training cannot resume from it; {then}"
    )


def _readable(path: Path, *, latest: bool) -> CheckpointMeta:
    """The record of a checkpoint whose header and tensor table read; for an explicit path,
    an unreadable file names the previous checkpoint to use instead."""
    try:
        meta = read_meta(path)
        checkpoint.tensor_table(path)
        return meta
    except CheckpointError as error:
        if latest:
            raise
        older = [p for p in list_checkpoints(path.parent) if p.name < path.name]
        hint = (
            f"; the previous checkpoint is {older[-1]}: pass --resume={older[-1]}" if older else ""
        )
        raise CheckpointError(f"{error}{hint}") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:20] + "...'"


def _same(a: Any, b: Any) -> bool:
    # Both sides are JSON values; compare them as JSON so tuples and lists agree.
    return bool(json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True))
