"""Reading a checkpoint's model for use: an untrusted file, checked before anything is built.

The record is validated, the model it claims is counted against the file's tensor table
(arithmetic: a record claiming a huge model fails before any allocation), then built on the
meta device and compared name by name, shape by shape, before a tensor is read. A run that
kept an EMA of its params (TrainConfig.ema_decay) is used through its EMA. A LoRA run's
checkpoint comes back with its adapters merged into plain params.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from craft import checkpoint, tree
from craft.checkpoint import CheckpointError
from craft.models.spec import ModelSpec
from craft.train import lora
from craft.train import meta as checkpoint_meta
from craft.train.meta import CheckpointMeta
from craft.train.quantized_params import load_quantized, quantization_of
from craft.tree import Params

EMA = "ema"
"""Where a checkpoint holds the EMA of its params, under the params' own dotted names."""


def load_model(path: Path) -> tuple[CheckpointMeta, ModelSpec, Any, Params]:
    """The record, the registered model, its config and its params (no optimizer state).

    Inference uses the EMA when the checkpoint holds one (`ema.*`, written by a run with
    TrainConfig.ema_decay): its values take the place of the params they average (all of
    them, or those a fine-tuning run trained), after their names, shapes and dtypes are checked
    against the model's like the params'. So evaluate, generate, sample and init_from use the
    averaged model, as the run's own evaluation did. A LoRA run's adapters are merged last.
    A quantized checkpoint (`craft.main quantize`) comes back with its quantized weights as
    `QuantizedWeight`s: integers in memory, used by the model as float matrices.
    """
    path = Path(path)
    record = checkpoint_meta.read(path)
    spec, model_cfg = checkpoint_meta.model_of(path, record)
    quantization = quantization_of(record, path)
    if quantization is not None:  # written by `quantize`: plain params, some as integers
        checkpoint_meta.check_model(path, spec, model_cfg, quantized=True)
        with torch.device("meta"):
            shapes = spec.init(model_cfg, seed=0)
        return record, spec, model_cfg, load_quantized(path, shapes, quantization)
    adapters = lora.config_of(record, path)
    checkpoint_meta.check_model(path, spec, model_cfg, "params.base" if adapters else "params")
    with torch.device("meta"):
        shapes = spec.init(model_cfg, seed=0)
    if adapters is not None:  # a LoRA run's params: its base and the adapters
        shapes = lora.attach(shapes, lora.shapes(shapes, adapters))
    params, _ = checkpoint.load(path, like=shapes, prefix="params")
    params = _with_ema(path, params, shapes)
    if adapters is not None:
        with torch.no_grad():
            params = lora.model_params(params, adapters)
    return record, spec, model_cfg, params


def _with_ema(path: Path, params: Params, shapes: Params) -> Params:
    """`params` with the checkpoint's EMA values in place of the params they average (as they
    are when it holds none). Every EMA name must be a param's, with its shape and dtype
    (checked against the meta-device `shapes` before a tensor is read)."""
    lead = f"{EMA}."
    held = [name[len(lead) :] for name in checkpoint.tensor_table(path) if name.startswith(lead)]
    if not held:
        return params
    expected = tree.to_dotted(shapes)
    strangers = [name for name in held if name not in expected]
    if strangers:
        raise CheckpointError(
            f"{path}: its EMA holds tensors that name no param of the model: "
            + ", ".join(f"{lead}{name}" for name in strangers[:5])
            + (f" and {len(strangers) - 5} more" if len(strangers) > 5 else "")
        )
    like = tree.from_dotted({name: expected[name] for name in held})
    ema, _ = checkpoint.load(path, like=like, prefix=EMA)
    named = tree.to_dotted(params)
    named.update(tree.to_dotted(ema))
    return tree.from_dotted(named, like=params)
