"""Checkpoints derived from another (quantized, pruned): written beside nothing they replace.

A derived checkpoint is one file in a new folder, with the files that sat beside its source
(the tokenizer) copied next to it, so `evaluate` and `generate` read it as they read a run's.
Its record is the source's, plus `derived` (how it was made, from which file): training
cannot resume from it (it holds no optimizer state) and says so.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from craft import checkpoint
from craft.errors import ConfigError
from craft.files import holds_files
from craft.train.meta import CheckpointMeta


def check_output(output: Path, source: Path) -> None:
    """A new or empty folder that is not the source's own."""
    if holds_files(output):
        raise ConfigError(
            f"--output={output} already holds files: give a new folder (the derived "
            "checkpoint and its tokenizer are written there)"
        )
    if output.resolve() == source.resolve().parent:
        raise ConfigError(f"--output={output} is the source's own folder: give a new one")


def write_derived(
    source: Path,
    output: Path,
    record: CheckpointMeta,
    tensors: dict[str, Any],
    derived: dict[str, Any],
    *,
    extra: dict[str, Any] | None = None,
    drop_configs: tuple[str, ...] = (),
    model_config: tuple[str, dict[str, Any]] | None = None,
) -> Path:
    """Save `tensors` as `output/step-N.safetensors` with the source's record, plus `derived`
    (how it was made; `from` is added) and `extra` record keys, less `drop_configs`, with a new
    `model_config` (its class name, its fields) where the model changed shape. The source's
    companion files are copied beside it."""
    check_output(output, source)
    meta = record.as_dict()
    meta["configs"] = {k: v for k, v in meta["configs"].items() if k not in drop_configs}
    if model_config is not None:
        name, fields = model_config
        meta["model_config"] = meta["configs"][name] = fields
    meta["val_loss"] = None  # measured on the source, not on this model
    meta["derived"] = {"from": str(source), **derived}
    meta.update(extra or {})
    path = checkpoint.save(output, tensors, record.step, meta)
    for companion in source.parent.iterdir():
        if companion.is_file() and not _is_checkpoint(companion):
            shutil.copy2(companion, output / companion.name)
    return path


def _is_checkpoint(path: Path) -> bool:
    return path.name.startswith("step-") and ".safetensors" in path.name
