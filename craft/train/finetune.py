"""Starting a run from trained weights (`RunConfig.init_from`) instead of `init`.

The source is any Craft checkpoint: one a training run wrote, or a model imported from another
format (the same safetensors file with a validated record). Only its params are taken: the
run starts at step 0 with a fresh optimizer, unlike `--resume`. The file is untrusted, so it
is read by `craft.train.weights.load_model` (record validated, model counted and shaped on
the meta device before any tensor is read), after the model it claims is compared with the
configured one, so a mismatch fails before anything large is read.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from craft import checkpoint, tree
from craft.errors import ConfigError
from craft.models.spec import ModelSpec
from craft.train import lora
from craft.train import meta as checkpoint_meta
from craft.train.quantized_params import quantization_of
from craft.train.weights import load_model
from craft.tree import Params


def load_initial_params(path: str | Path, spec: ModelSpec, model_cfg: Any) -> Params:
    """The params in checkpoint `path`, which must fit `spec` configured as `model_cfg`:
    the same model, and the same param names and shapes (dropout and other fields that shape
    no param may differ). A mismatch is one `ConfigError` saying what differs."""
    path = checkpoint.resolve(path)  # a file, or a run or checkpoints folder: its newest
    record = checkpoint_meta.read(path)
    held_spec, held_cfg = checkpoint_meta.model_of(path, record)
    if held_spec.name != spec.name:
        raise ConfigError(
            f"RunConfig.init_from = {str(path)!r} holds a {held_spec.name!r} model, but this "
            f"run trains {spec.name!r} (TrainConfig.model)"
        )
    if quantization_of(record, path) is not None:
        raise ConfigError(
            f"RunConfig.init_from = {str(path)!r} is quantized (integer weights, for inference): "
            "start from the float checkpoint it was made from"
        )
    adapted = lora.config_of(record, path)
    # Counted first (arithmetic): a record claiming a huge model fails before it is shaped.
    checkpoint_meta.check_model(path, held_spec, held_cfg, "params.base" if adapted else "params")
    check_fits(path, spec, held_cfg, model_cfg)
    return load_model(path)[3]


def check_fits(path: Path, spec: ModelSpec, held_cfg: Any, model_cfg: Any) -> None:
    """Refuse a checkpoint whose params (names, shapes) differ from the configured model's,
    listing both the config fields that differ and the params they change."""
    with torch.device("meta"):  # shapes only: nothing is allocated
        held = {name: tuple(t.shape) for name, t in _shapes(spec, held_cfg).items()}
        wanted = {name: tuple(t.shape) for name, t in _shapes(spec, model_cfg).items()}
    before, after = held_cfg.model_dump(), model_cfg.model_dump()
    if held == wanted:
        differ = [f"{name}: {before.get(name)!r} -> {after[name]!r}" for name in after
                  if before.get(name) != after[name]]  # fmt: skip
        if differ:
            # Allowed (dropout is the usual one), but some change what the model computes
            # (heads, activation): say so rather than start from another function silently.
            warnings.warn(
                f"RunConfig.init_from = {str(path)!r}: {spec.config.__name__} fields that shape "
                f"no param differ from the checkpoint's; the run uses its own: "
                + "; ".join(differ),
                stacklevel=3,
            )
        return
    fields = [
        f"{name}: checkpoint {before[name]!r}, this run {after[name]!r}"
        + ("" if _shapes_params(spec, held_cfg, name, after[name], held) else " (shapes no param)")
        for name in after
        if before.get(name) != after[name]
    ]
    params = [
        f"{name}: checkpoint {list(held[name]) if name in held else 'none'}, "
        f"this run {list(wanted[name]) if name in wanted else 'none'}"
        for name in [*wanted, *(n for n in held if n not in wanted)]
        if held.get(name) != wanted.get(name)
    ]
    more = f"\n  ... and {len(params) - 8} more params" if len(params) > 8 else ""
    raise ConfigError(
        f"RunConfig.init_from = {str(path)!r} does not fit the configured model.\n"
        f"{spec.config.__name__} fields that differ:\n  " + "\n  ".join(fields) + "\n"
        "params that differ:\n  " + "\n  ".join(params[:8]) + more + "\n"
        f"set the {spec.config.__name__} fields to the checkpoint's (a vocab_size comes from "
        "the dataset: prepare it with the checkpoint's tokenizer)"
    )


def _shapes(spec: ModelSpec, cfg: Any) -> dict[str, torch.Tensor]:
    return tree.to_dotted(spec.init(cfg, seed=0))


def _shapes_params(
    spec: ModelSpec, held_cfg: Any, name: str, value: Any, held: dict[str, tuple[int, ...]]
) -> bool:
    """Does changing this one field of the checkpoint's config change its params?"""
    try:
        with torch.device("meta"):
            changed = _shapes(spec, held_cfg.model_copy(update={name: value}))
    except (ValueError, ArithmeticError):  # not a model on its own (heads that do not divide)
        return True
    return {key: tuple(t.shape) for key, t in changed.items()} != held
