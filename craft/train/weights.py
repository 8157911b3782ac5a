"""Reading a checkpoint's model for use: an untrusted file, checked before anything is built.

The record is validated, the model it claims is counted against the file's tensor table
(arithmetic: a record claiming a huge model fails before any allocation), then built on the
meta device and compared name by name, shape by shape, before a tensor is read. A LoRA run's
checkpoint comes back with its adapters merged into plain params.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from craft import checkpoint
from craft.models.spec import ModelSpec
from craft.train import lora
from craft.train import meta as checkpoint_meta
from craft.train.meta import CheckpointMeta
from craft.tree import Params


def load_model(path: Path) -> tuple[CheckpointMeta, ModelSpec, Any, Params]:
    """The record, the registered model, its config and its params (no optimizer state)."""
    path = Path(path)
    record = checkpoint_meta.read(path)
    spec, model_cfg = checkpoint_meta.model_of(path, record)
    adapters = lora.config_of(record, path)
    checkpoint_meta.check_model(path, spec, model_cfg, "params.base" if adapters else "params")
    if adapters is not None:  # a LoRA run's checkpoint: its base with the adapters merged
        return record, spec, model_cfg, lora.load_merged(path, spec, model_cfg, adapters)
    with torch.device("meta"):
        shapes = spec.init(model_cfg, seed=0)
    params, _ = checkpoint.load(path, like=shapes, prefix="params")
    return record, spec, model_cfg, params
