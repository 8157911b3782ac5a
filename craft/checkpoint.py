"""Checkpoints as safetensors: everything a run needs to continue, and nothing that runs code.

A checkpoint is one file, `step-00001234.safetensors`, holding a whole state tree (the training
loop stores its `TrainState` as a dict) under dotted names (`params.blocks.0.attn.qkv.w`,
`opt_state.mu...`, `step`, `rng`, `loss_scale.scale`, and `ema...` when the run keeps an EMA
of its params) and, as JSON in the safetensors metadata, the effective config, the tokenizer
file, the val loss and library versions. Files are written to a temporary name, fsynced and
renamed, so a kill at any moment leaves the previous checkpoints intact, and a file with the
final name is complete.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import safetensors
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from craft import tree
from craft.errors import CraftError
from craft.files import is_out_of_space, out_of_space

_NAME = re.compile(r"step-(\d{8})\.safetensors")
META_KEY = "craft"


class CheckpointError(CraftError):
    """A checkpoint that is missing, damaged or does not fit the configured model."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.safetensors"


def save(directory: Path, state: dict[str, Any], step: int, meta: dict[str, Any]) -> Path:
    """Write the `state` tree and `meta` atomically as `directory/step-<step>.safetensors`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: value.detach().contiguous().clone()
        if _shares_storage(value)
        else value.detach().contiguous()
        for name, value in tree.to_dotted(state).items()
    }
    path = directory / checkpoint_name(step)
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(_to_cpu(tensors), str(tmp), metadata={META_KEY: json.dumps(meta)})
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
    except (OSError, safetensors.SafetensorError) as error:
        tmp.unlink(missing_ok=True)  # a partial file must not fill what space is left
        if is_out_of_space(error):
            needed = sum(t.numel() * t.element_size() for t in tensors.values())
            raise out_of_space(path, needed, error) from None
        raise
    os.replace(tmp, path)
    _fsync_dir(directory)
    return path


def load(
    path: Path, like: dict[str, Any], prefix: str = "", skip: str | tuple[str, ...] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a checkpoint into a tree shaped like `like`, checking every name, shape and dtype.

    With `prefix` (e.g. "params"), only the tensors under it are read and checked; the tensors
    under `skip` (e.g. "ema", or several: parts of the state this reader leaves out) are
    neither. Tensors are
    copied out of the file (not memory-mapped), so the file may be replaced later. `like` may
    live on the meta device (shapes only): its tensors are then read onto the CPU.
    """
    path = Path(path)
    lead = f"{prefix}." if prefix else ""
    expected = {lead + name: value for name, value in tree.to_dotted(like).items()}
    meta = read_meta(path)
    loaded: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = handle.keys()
            names = {name for name in keys if name.startswith(lead)}
            skipped = (skip,) if isinstance(skip, str) else skip or ()
            names = {n for n in names if not any(n.startswith(f"{part}.") for part in skipped)}
            missing = [n for n in expected if n not in names]
            unexpected = sorted(names - set(expected))
            problems = []
            if missing:
                problems.append(f"missing tensors: {', '.join(missing[:10])}" + _more(missing))
            if unexpected:
                problems.append(
                    f"unexpected tensors: {', '.join(unexpected[:10])}" + _more(unexpected)
                )
            for name, want in expected.items():
                if name not in names:
                    continue
                got = handle.get_slice(name)
                shape, dtype = tuple(got.get_shape()), got.get_dtype()
                if shape != tuple(want.shape) or _DTYPES.get(dtype) != want.dtype:
                    problems.append(
                        f"{name}: file has {dtype} {list(shape)}, the config expects "
                        f"{str(want.dtype).removeprefix('torch.')} {list(want.shape)}"
                    )
            if problems:
                raise CheckpointError(
                    f"{path} does not fit the configured model:\n  " + "\n  ".join(problems)
                )
            for name, want in expected.items():
                device = "cpu" if want.device.type == "meta" else want.device
                loaded[name.removeprefix(lead)] = handle.get_tensor(name).clone().to(device)
    except CheckpointError:
        raise
    except (OSError, safetensors.SafetensorError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupted?): {error}"
        ) from None
    return tree.from_dotted(loaded, like=like), meta


def read_meta(path: Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint file, with clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(META_KEY)
    except (OSError, safetensors.SafetensorError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupted?): {error}"
        ) from None
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file without Craft metadata")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: its Craft metadata is not JSON ({error})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{path}: its Craft metadata is a JSON {type(meta).__name__}, not an object"
        )
    return meta


def tensor_table(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every tensor's dtype and shape from the file's header, reading no tensor data."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            table = {}
            names = handle.keys()  # safe_open handles are not iterable
            for name in names:
                piece = handle.get_slice(name)
                table[name] = (piece.get_dtype(), tuple(piece.get_shape()))
            return table
    except (OSError, safetensors.SafetensorError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupted?): {error}"
        ) from None


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints in `directory`, oldest first (temporary files are never listed)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.fullmatch(p.name)]
    return sorted(found, key=lambda p: p.name)


def resolve(spec: str | Path, directory: Path | None = None) -> Path:
    """`latest` (the newest complete checkpoint in `directory`), a checkpoint file, or a folder
    holding checkpoints (its newest) or a run folder (its checkpoints/ newest)."""
    if str(spec) == "latest":
        if directory is None:
            raise CheckpointError("--resume=latest needs a run folder to look in")
        candidates = list_checkpoints(directory)
        if not candidates:
            raise CheckpointError(f"no checkpoint in {directory} to resume from")
        return candidates[-1]
    path = Path(spec)
    if path.is_dir():
        inner = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        candidates = list_checkpoints(inner)
        if not candidates:
            raise CheckpointError(f"no checkpoint in {inner}")
        return candidates[-1]
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix != ".safetensors":
        raise CheckpointError(
            f"{path} is not a checkpoint: give a step-*.safetensors file or a run folder "
            "(its newest checkpoint is used)"
        )
    return path


def prune(directory: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints and the best by val loss."""
    checkpoints = list_checkpoints(directory)
    keep = set(checkpoints[-keep_last:]) if keep_last > 0 else set()
    best = best_checkpoint(directory)
    if best is not None:
        keep.add(best)
    removed = [p for p in checkpoints if p not in keep]
    for p in removed:
        p.unlink()
    return removed


def best_checkpoint(directory: Path) -> Path | None:
    """The checkpoint in `directory` (a checkpoints folder or a run folder) with the lowest
    recorded val loss (the earliest of equals); None when none records one."""
    directory = Path(directory)
    if (directory / "checkpoints").is_dir():
        directory = directory / "checkpoints"
    losses = {p: _val_loss(p) for p in list_checkpoints(directory)}
    scored = {p: loss for p, loss in losses.items() if loss is not None}
    return min(scored, key=scored.__getitem__) if scored else None


def _val_loss(path: Path) -> float | None:
    """A checkpoint's recorded val loss; None when it has none or cannot be read."""
    try:
        loss = read_meta(path).get("val_loss")
        return float(loss) if loss is not None else None
    except (CheckpointError, TypeError, ValueError):
        return None


_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _more(items: list[str]) -> str:
    return f" and {len(items) - 10} more" if len(items) > 10 else ""


def _shares_storage(tensor: torch.Tensor) -> bool:
    # safetensors refuses views into a larger storage; a clone makes them standalone.
    return tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size()


def _to_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.cpu() for name, value in tensors.items()}


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
