"""`quantize`: a checkpoint's linear and embedding weights as int8 or int4, in a new folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from craft import tree
from craft.compress.derived import write_derived
from craft.errors import ConfigError
from craft.nn.quant import INT4_GROUP_SIZES
from craft.train.lora import LoRAConfig
from craft.train.quantized_params import quantization_of, quantize_params
from craft.train.weights import load_model


def check_bits(bits: object, group_size: object) -> tuple[int, int | None]:
    """(bits, group size) from the flags, or a `ConfigError` saying what is accepted."""
    if bits not in (4, 8) or isinstance(bits, bool):
        raise ConfigError(f"--bits must be 8 (per output channel) or 4 (in groups), got {bits!r}")
    if bits == 8:
        if group_size is not None:
            raise ConfigError("--group_size applies to --bits=4 (int8 is per output channel)")
        return 8, None
    group = 32 if group_size is None else group_size
    if group not in INT4_GROUP_SIZES or isinstance(group, bool):
        raise ConfigError(f"--group_size must be 32 or 64, got {group_size!r}")
    assert isinstance(group, int)
    return 4, group


def quantize_checkpoint(
    source: Path, output: Path, bits: int, group_size: int | None
) -> tuple[Path, dict[str, Any]]:
    """Write `source`'s model (its EMA, LoRA merged, as inference reads it) with its weights
    quantized; returns the new file and a report (sizes in bytes, what was quantized)."""
    record, _, _, params = load_model(source)
    if quantization_of(record, source) is not None:
        raise ConfigError(f"{source} is already quantized: quantize the checkpoint it came from")
    tensors, names = quantize_params(params, bits, group_size)
    left = [name for name in tree.to_dotted(params) if name not in names]
    quantization = {"bits": bits, "group_size": group_size, "weights": names}
    path = write_derived(
        source, output, record, tensors,
        {"by": "quantize", "bits": bits, "group_size": group_size},
        extra={"quantization": quantization},
        drop_configs=(LoRAConfig.__name__,),  # the adapters are merged into the weights
    )  # fmt: skip
    float_bytes = sum(leaf.numel() * 4 for leaf in tree.leaves(params))
    return path, {
        "checkpoint": str(path),
        "bits": bits,
        "group_size": group_size,
        "quantized": len(names),
        "kept_float": len(left),
        "weight_bytes_fp32": float_bytes,
        "weight_bytes": sum(t.numel() * t.element_size() for t in tree.leaves(tensors)),
        "file_bytes": path.stat().st_size,
    }
