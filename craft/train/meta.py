"""What a training checkpoint says about itself, checked before anything is built from it.

The loop writes this record as JSON into every checkpoint. A checkpoint is untrusted input (it
may come from anywhere), so readers validate the record's shape here, and compare the model it
claims with the tensors the file holds (`check_model`) before they allocate anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from craft import checkpoint
from craft.checkpoint import CheckpointError
from craft.models import MODELS
from craft.models.spec import ModelSpec


class CheckpointMeta(BaseModel):
    """The JSON record of a checkpoint (unknown extra keys are kept and ignored)."""

    model_config = ConfigDict(extra="allow", frozen=True, protected_namespaces=())

    step: int = Field(ge=0)
    data_position: int | None = Field(None, ge=0)
    val_loss: float | None = None
    task: str = "lm"  # checkpoints written before tasks existed were all language models
    task_meta: dict[str, Any] = {}
    model: str
    model_settings: dict[str, Any] = Field(alias="model_config")
    """The model's config as trained (named `model_config` in the file)."""
    configs: dict[str, dict[str, Any]]
    """Every config the run used, by class name, as JSON."""
    versions: dict[str, str] = {}

    def as_dict(self) -> dict[str, Any]:
        """The record as written, for tasks reading their own fields."""
        return self.model_dump(mode="json", by_alias=True)


def read(path: Path) -> CheckpointMeta:
    """The checkpoint's record, or one `CheckpointError` naming the file and what is wrong."""
    raw = checkpoint.read_meta(path)
    try:
        return CheckpointMeta.model_validate(raw)
    except ValidationError as error:
        raise CheckpointError(f"{path}: its Craft metadata is malformed: {_short(error)}") from None


def model_of(path: Path, meta: CheckpointMeta) -> tuple[ModelSpec, Any]:
    """The registered model and its validated config that the record names."""
    if meta.model not in MODELS:
        raise CheckpointError(f"{path} names an unknown model {meta.model!r}")
    spec = MODELS[meta.model]
    try:
        cfg = spec.config.model_validate(meta.model_settings)
    except ValidationError as error:
        raise CheckpointError(
            f"{path}: its model_config is not a valid {spec.config.__name__}: {_short(error)}"
        ) from None
    return spec, cfg


def check_model(
    path: Path, spec: ModelSpec, cfg: Any, prefix: str = "params", *, quantized: bool = False
) -> None:
    """Refuse a config whose parameter count differs from the tensors in the file.

    Counting is arithmetic (`param_count`), so a config claiming a model far larger than the
    file (48 layers, a vocabulary of 1e9) fails here before any memory is allocated; the exact
    names and shapes are then checked on the meta device by `checkpoint.load`. `quantized`:
    the file's `quantized.*.values` count too (two int4 weights per uint8).
    """
    lead = f"{prefix}."
    held = 0
    for name, (dtype, shape) in checkpoint.tensor_table(path).items():
        weights = quantized and name.startswith("quantized.") and name.endswith(".values")
        if name.startswith(lead) or weights:
            count = 2 if weights and dtype == "U8" else 1
            for size in shape:
                count *= size
            held += count
    try:
        claimed = spec.param_count(cfg)
    except (ArithmeticError, ValueError) as error:
        raise CheckpointError(f"{path}: its model_config cannot be counted: {error}") from None
    if claimed != held:
        raise CheckpointError(
            f"{path}: its model_config describes a {spec.name!r} model of {claimed:,} parameters, "
            f"but the file holds {held:,}; the metadata does not match the tensors"
        )


def _short(error: ValidationError) -> str:
    """`model_config: Field required; step: Input should be a valid integer`."""
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts[:5]) + (f" and {len(parts) - 5} more" if len(parts) > 5 else "")
