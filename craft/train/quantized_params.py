"""Quantized params on disk: integers and scales as plain safetensors, read back checked.

A quantized checkpoint holds the weights it quantized as `quantized.<name>.values` (int8
`[out, in]`, or uint8 `[out, in / 2]` with two int4 per byte), `quantized.<name>.scales` (fp32
`[out]` for int8; fp16 `[out, in / group]` for int4) and, for int4, `quantized.<name>.lows`
(fp16, like the scales); every other param stays under `params.<name>` as usual. Its record
says how (`quantization`: bits, group size, the names). Read back, a quantized weight becomes
a `QuantizedWeight` that the model uses in place of its float matrix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from craft import checkpoint, tree
from craft.checkpoint import CheckpointError
from craft.nn.quant import INT4_GROUP_SIZES, quantize_int4, quantize_int8
from craft.nn.quantized import QuantizedWeight
from craft.tree import Params

QUANTIZED = "quantized"
"""Where a checkpoint holds its quantized weights, under the params' own dotted names."""
WEIGHT_NAMES = ("w", "embedding")
"""The last part of the names of the weights quantized: linear weights and embedding tables."""


class Quantization(BaseModel):
    """How a checkpoint's weights are quantized (its record's `quantization`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bits: int
    group_size: int | None = None
    weights: list[str] = Field(default_factory=list)
    """Dotted names of the quantized weights; the other params are stored as they were."""

    @model_validator(mode="after")
    def _known_layout(self) -> Quantization:
        if self.bits == 8 and self.group_size is not None:
            raise ValueError("int8 is per output channel: group_size must be null")
        if self.bits == 4 and self.group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"int4 group_size must be one of {INT4_GROUP_SIZES}")
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {self.bits}")
        return self


def quantizable(name: str, leaf: torch.Tensor, bits: int, group_size: int | None) -> bool:
    """Whether the param `name` is quantized: a 2-D linear or embedding weight whose inputs
    (int4) split into whole groups."""
    if name.rpartition(".")[2] not in WEIGHT_NAMES or leaf.ndim != 2:
        return False
    return bits == 8 or (group_size is not None and leaf.shape[1] % group_size == 0)


def quantize_params(params: Params, bits: int, group_size: int | None) -> tuple[Params, list[str]]:
    """The tensors to save (`params.*` and `quantized.*`) and the names quantized."""
    rest: dict[str, torch.Tensor] = {}
    packed: dict[str, torch.Tensor] = {}
    names = []
    for name, leaf in tree.to_dotted(params).items():
        if not quantizable(name, leaf, bits, group_size):
            rest[name] = leaf.detach().float()
            continue
        names.append(name)
        if bits == 8:
            values, scales = quantize_int8(leaf)
            packed.update({f"{name}.values": values, f"{name}.scales": scales})
        else:
            assert group_size is not None
            values, scales, lows = quantize_int4(leaf, group_size)
            packed.update(
                {f"{name}.values": values, f"{name}.scales": scales, f"{name}.lows": lows}
            )
    tensors = {f"params.{name}": value for name, value in rest.items()}
    tensors.update({f"{QUANTIZED}.{name}": value for name, value in packed.items()})
    return tree.from_dotted(tensors), names


def quantization_of(record: Any, path: Path) -> Quantization | None:
    """The checkpoint's quantization, or None (a float checkpoint)."""
    raw = (record.model_extra or {}).get("quantization")
    if raw is None:
        return None
    try:
        return Quantization.model_validate(raw)
    except ValidationError as error:
        raise CheckpointError(f"{path}: its quantization record is malformed: {error}") from None


def load_quantized(path: Path, shapes: Params, quantization: Quantization) -> Params:
    """The params of a quantized checkpoint, its weights as `QuantizedWeight`s, every name,
    shape and dtype checked against the model's (`shapes`, on the meta device) first."""
    expected = tree.to_dotted(shapes)
    strangers = [name for name in quantization.weights if name not in expected]
    if strangers:
        raise CheckpointError(
            f"{path}: its quantization names weights the model lacks: {', '.join(strangers[:5])}"
        )
    like: dict[str, torch.Tensor] = {}
    for name, shape in expected.items():
        if name not in quantization.weights:
            like[f"params.{name}"] = shape
            continue
        if shape.ndim != 2:
            raise CheckpointError(f"{path}: {name} is not a 2-D weight, it cannot be quantized")
        like.update(_stored_like(name, tuple(shape.shape), quantization))
    loaded, _ = checkpoint.load(path, like=tree.from_dotted(like))
    named = tree.to_dotted(loaded.get("params", {}))
    stored = tree.to_dotted(loaded.get(QUANTIZED, {}))
    for name in quantization.weights:
        scales = stored[f"{name}.scales"]
        _check_scales(path, name, scales)
        named[name] = QuantizedWeight(stored[f"{name}.values"], scales, stored.get(f"{name}.lows"))
    return tree.from_dotted({name: named[name] for name in expected}, like=shapes)


def holds_quantized(params: Params) -> bool:
    return any(isinstance(leaf, QuantizedWeight) for leaf in tree.leaves(params))


def dequantized(params: Params) -> Params:
    """`params` with every `QuantizedWeight` unpacked to its float matrix: fp32 speed (torch's
    int8 / int4 CPU kernels are slower than fp32 matmuls at these sizes) at fp32 memory."""
    return tree.tree_map(
        lambda leaf: leaf.dequantize() if isinstance(leaf, QuantizedWeight) else leaf, params
    )


def _stored_like(
    name: str, shape: tuple[int, ...], quantization: Quantization
) -> dict[str, torch.Tensor]:
    """Meta tensors shaped as the file must hold the weight `name` of `shape`."""
    out, inputs = shape
    lead = f"{QUANTIZED}.{name}"
    empty = torch.empty
    if quantization.bits == 8:
        return {
            f"{lead}.values": empty(out, inputs, dtype=torch.int8, device="meta"),
            f"{lead}.scales": empty(out, dtype=torch.float32, device="meta"),
        }
    assert quantization.group_size is not None
    groups = inputs // quantization.group_size
    return {
        f"{lead}.values": empty(out, inputs // 2, dtype=torch.uint8, device="meta"),
        f"{lead}.scales": empty(out, groups, dtype=torch.float16, device="meta"),
        f"{lead}.lows": empty(out, groups, dtype=torch.float16, device="meta"),
    }


def _check_scales(path: Path, name: str, scales: torch.Tensor) -> None:
    """Any integer is a valid value; a scale must be positive and finite."""
    if not torch.isfinite(scales).all() or (scales <= 0).any():
        raise CheckpointError(f"{path}: {name}'s scales are not all positive and finite")
