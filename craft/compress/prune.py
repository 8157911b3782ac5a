"""`prune`: a checkpoint's model with its smallest weights zeroed, or (structured) smaller."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from craft import tree
from craft.compress.derived import write_derived
from craft.errors import ConfigError
from craft.train.lora import LoRAConfig
from craft.train.pruning import MASKS, Pruner, apply_masks, magnitude_mask, pruned_names
from craft.train.quantized_params import quantization_of
from craft.train.weights import load_model

DEFAULT_TARGETS = ("*.w",)
"""What unstructured pruning zeroes by default: every linear weight (PruneConfig's default)."""


def check_sparsity(sparsity: object) -> float:
    """The --sparsity flag as a share in [0, 1), or a `ConfigError`."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float):
        raise ConfigError(f"--sparsity must be a number in [0, 1), got {sparsity!r}")
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(
            f"--sparsity must lie in [0, 1) (the share of weights, or with --structured of "
            f"MLP neurons, removed), got {sparsity}"
        )
    return float(sparsity)


def prune_checkpoint(
    source: Path, output: Path, sparsity: float, *, structured: bool = False, heads: int = 0
) -> tuple[Path, dict[str, Any]]:
    """Write `source`'s model (as inference reads it: its EMA, LoRA merged) pruned.

    Unstructured: in every linear weight, the `sparsity` share of entries smallest in
    magnitude set to zero; the file holds the masks too (`masks.*`). Structured: the model
    rebuilt without the `sparsity` share of MLP neurons and `heads` heads per block (the
    model's `shrink`), a smaller dense model to fine-tune with RunConfig.init_from.
    """
    if heads and not structured:
        raise ConfigError("--heads removes whole attention heads: it needs --structured")
    record, spec, model_cfg, params = load_model(source)
    if quantization_of(record, source) is not None:
        raise ConfigError(f"{source} is quantized: prune the float checkpoint it came from")
    derived: dict[str, Any] = {"by": "prune", "sparsity": sparsity, "structured": structured}
    before = tree.count(params)
    if structured:
        if spec.shrink is None:
            raise ConfigError(f"--structured: the {spec.name!r} model has no structured pruning")
        try:
            params, model_cfg = spec.shrink(params, model_cfg, mlp=sparsity, heads=heads)
        except ValueError as error:
            raise ConfigError(f"--structured: {error}") from None
        fields = model_cfg.model_dump(mode="json")
        path = write_derived(
            source, output, record, {"params": params}, {**derived, "heads": heads},
            drop_configs=(LoRAConfig.__name__,),
            model_config=(spec.config.__name__, fields),
        )  # fmt: skip
        changed = {k: v for k, v in fields.items() if v != record.model_settings.get(k)}
        return path, {
            "checkpoint": str(path),
            "params_before": before,
            "params_after": tree.count(params),
            "model_config": changed,
            "fine_tune_gin": [f"{spec.config.__name__}.{k} = {v!r}" for k, v in changed.items()],
        }
    names = pruned_names(params, DEFAULT_TARGETS)
    named = tree.to_dotted(params)
    masks = tree.from_dotted({name: magnitude_mask(named[name], sparsity) for name in names})
    with torch.no_grad():
        apply_masks(params, masks)
    path = write_derived(
        source, output, record, {"params": params, MASKS: masks}, derived,
        drop_configs=(LoRAConfig.__name__,),
    )  # fmt: skip
    zeros = sum(int((leaf == 0).sum()) for leaf in tree.leaves(params))
    return path, {
        "checkpoint": str(path),
        "pruned_weights": len(names),
        "sparsity_of_pruned": Pruner.sparsity(masks),
        "zero_share_of_all_params": zeros / before,
    }
