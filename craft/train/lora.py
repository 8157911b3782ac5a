"""LoRA: low-rank adapters as a pure transform of the params.

For each adapted weight W `[out, in]` (the layout `F.linear` takes), an adapter holds
A `[rank, in]` (random) and B `[out, rank]` (zeros), and the model runs on

    W_eff = W + (alpha / rank) * B @ A

so it starts exactly at the base model and only A and B train. The model's code does not know
about it: `merge` builds plain params, which is also what export and generation use.

A LoRA run's params are one tree, `{"base": model params, "lora": adapters}`, and its trainable
names are the adapters (plus any base params `TrainConfig.trainable` names): the base is frozen
with no optimizer state, and checkpoints hold base and adapters, so a run resumes bit-exactly
from its own files, even if the checkpoint it started from is gone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from craft import tree
from craft.checkpoint import CheckpointError
from craft.config import configurable
from craft.errors import ConfigError
from craft.optim.masks import matches
from craft.train.meta import CheckpointMeta
from craft.tree import Params

BASE, ADAPTERS = "base", "lora"
WEIGHT_NAMES = ("w", "weight")  # Craft's linear layers; nn.Module params (craft.from_module)


@configurable
class LoRAConfig(BaseModel):
    """Low-rank adapters on the named projections; `rank` > 0 turns LoRA on."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    rank: int = Field(0, ge=0)
    """The adapters' rank r; 0: no LoRA (every param trains, or those TrainConfig.trainable
    names)."""
    alpha: float = Field(16.0, gt=0)
    """The adapters' scale is alpha / rank."""
    targets: list[str] = ["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"]
    """The layers adapted: dotted paths of linear layers (holding a 2-d `w`), matched at the
    end of the path ('attn.qkv' covers 'blocks.3.attn.qkv') or as fnmatch patterns."""

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def target_weights(params: Params, cfg: LoRAConfig) -> list[str]:
    """The dotted names of the weights `cfg.targets` adapts, in tree order; a target that
    matches no linear weight is a `ConfigError` naming it."""
    found: list[str] = []
    unmatched = []
    names = tree.to_dotted(params)
    for target in cfg.targets:
        hits = [name for name, leaf in names.items() if _is_target(name, leaf, target)]
        if not hits:
            unmatched.append(target)
        found += [name for name in hits if name not in found]
    if unmatched:
        layers = sorted({name.rpartition(".")[0] for name, leaf in names.items()
                         if _is_weight(name, leaf)})  # fmt: skip
        shown = ", ".join(layers[:6]) + (", ..." if len(layers) > 6 else "")
        raise ConfigError(
            f"LoRAConfig.targets: {', '.join(repr(t) for t in unmatched)} matches no linear "
            f"layer; the model's are {shown}"
        )
    order = list(names)
    return sorted(found, key=order.index)


def init(params: Params, cfg: LoRAConfig, *, seed: int) -> Params:
    """Adapters for `params`: per adapted weight `{"a": [rank, in], "b": [out, rank]}` under
    the layer's path. A is uniform in +-1/sqrt(in) (kaiming-uniform with a = sqrt(5), as the
    LoRA paper's code), B is zero, so the adapted model equals the base one at first."""
    generator = torch.Generator().manual_seed(seed)
    adapters: dict[str, torch.Tensor] = {}
    for layer, (out_dim, in_dim) in _layers(params, cfg).items():
        bound = 1.0 / math.sqrt(in_dim)
        adapters[f"{layer}.a"] = (
            torch.rand(cfg.rank, in_dim, generator=generator) * (2 * bound) - bound
        )
        adapters[f"{layer}.b"] = torch.zeros(out_dim, cfg.rank)
    return tree.from_dotted(adapters)


def shapes(params: Params, cfg: LoRAConfig) -> Params:
    """Adapters of the right shapes on the meta device (to check a file or config against)."""
    adapters: dict[str, torch.Tensor] = {}
    for layer, (out_dim, in_dim) in _layers(params, cfg).items():
        adapters[f"{layer}.a"] = torch.empty(cfg.rank, in_dim, device="meta")
        adapters[f"{layer}.b"] = torch.empty(out_dim, cfg.rank, device="meta")
    return tree.from_dotted(adapters)


def _layers(params: Params, cfg: LoRAConfig) -> dict[str, tuple[int, int]]:
    """{adapted layer's path: its weight's (out, in)}, the rank checked against each."""
    flat = tree.to_dotted(params)
    layers = {}
    for name in target_weights(params, cfg):
        out_dim, in_dim = flat[name].shape
        if cfg.rank > min(out_dim, in_dim):
            raise ConfigError(
                f"LoRAConfig.rank = {cfg.rank} exceeds the smaller side of {name} "
                f"({min(out_dim, in_dim)}): train that weight in full instead "
                "(TrainConfig.trainable)"
            )
        layers[name.rpartition(".")[0]] = (out_dim, in_dim)
    return layers


def merge(params: Params, adapters: Params, cfg: LoRAConfig) -> Params:
    """Plain params: each adapted weight becomes W + (alpha / rank) * B @ A; the others are
    the same tensors. Differentiable (the training forward runs on it) and pure."""
    flat = tree.to_dotted(params)
    for layer, pair in _pairs(adapters).items():
        weight = _weight_of(flat, layer)
        flat[weight] = flat[weight] + cfg.scale * (pair["b"] @ pair["a"])
    return tree.from_dotted(flat, like=params)


def attach(base: Params, adapters: Params) -> Params:
    """A LoRA run's params tree."""
    return {BASE: base, ADAPTERS: adapters}


def model_params(params: Params, cfg: LoRAConfig) -> Params:
    """The model a LoRA run's params stand for, as plain params (adapters merged)."""
    return merge(params[BASE], params[ADAPTERS], cfg)


def adapted_apply(apply: Callable[..., Any], cfg: LoRAConfig) -> Callable[..., Any]:
    """`apply` over a LoRA run's params: the model on the merged weights."""

    def run(params: Params, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        return apply(model_params(params, cfg), inputs, *args, **kwargs)

    return run


def trainable(params: Params, base_names: Sequence[str] | None) -> tuple[str, ...]:
    """A LoRA run's trainable names: every adapter, and the base params in `base_names`
    (dotted names in the base model, from `TrainConfig.trainable`)."""
    names = [f"{BASE}.{name}" for name in base_names or ()]
    names += [f"{ADAPTERS}.{name}" for name in tree.to_dotted(params[ADAPTERS])]
    return tuple(names)


def config_of(record: CheckpointMeta, path: Path | str = "the checkpoint") -> LoRAConfig | None:
    """The LoRA config a checkpoint (`path`) was trained with, or None (not a LoRA run)."""
    raw = record.configs.get(LoRAConfig.__name__)
    if raw is None:
        return None
    try:
        cfg = LoRAConfig.model_validate(raw)
    except ValidationError as error:
        raise CheckpointError(f"{path}: its LoRAConfig is malformed: {error}") from None
    return cfg if cfg.rank > 0 else None


def _is_weight(name: str, leaf: torch.Tensor) -> bool:
    return name.rpartition(".")[2] in WEIGHT_NAMES and leaf.ndim == 2


def _is_target(name: str, leaf: torch.Tensor, target: str) -> bool:
    if not _is_weight(name, leaf):
        return False
    layer = name.rpartition(".")[0]
    return layer == target or layer.endswith(f".{target}") or matches(layer, target)


def _pairs(adapters: Params) -> dict[str, dict[str, torch.Tensor]]:
    """{layer path: {"a": A, "b": B}} from an adapters tree."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for name, leaf in tree.to_dotted(adapters).items():
        layer, _, which = name.rpartition(".")
        pairs.setdefault(layer, {})[which] = leaf
    return pairs


def _weight_of(flat: dict[str, torch.Tensor], layer: str) -> str:
    for leaf_name in WEIGHT_NAMES:
        if f"{layer}.{leaf_name}" in flat:
            return f"{layer}.{leaf_name}"
    raise KeyError(f"the adapters name a layer {layer!r} that the params do not hold")
