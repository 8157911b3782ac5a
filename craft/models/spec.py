"""`ModelSpec`: what the rest of Craft knows about a model, and the registry that names them.

Each model module ends with one `SPEC = ModelSpec(...)`; `craft/models/__init__.py` lists them.
Tasks, the loop and the CLI see a model only through its spec: they never import a model file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel

from craft.config import unknown_name
from craft.errors import ConfigError
from craft.tree import Params

Inputs = Literal["tokens", "images", "noisy_images"]
"""What `apply` takes: token ids `[B, T]` (int64), images `[B, C, H, W]` (float), or noisy
images: a dict `{"images": x_t [B, C, H, W] (float), "t": timesteps in [0, T) [B] (int64),
"labels": class ids in [0, num_classes] [B] (int64; the id num_classes means no label, the
unconditional input of classifier-free guidance)}`."""


@dataclass(frozen=True)
class ModelSpec:
    """A model: its Pydantic config and its pure functions.

    - `init(cfg, *, seed) -> params`
    - `apply(params, inputs, cfg, *, rng=None) -> outputs` (logits: `[B, T, vocab]` for token
      models, `[B, classes]` for classifiers; the predicted noise, shaped like the images, for
      noise predictors); `rng` is a key, or one key per row, for dropout.
    - `param_count(cfg) -> int`, without building the params.
    - `flops_per_example(cfg, shape) -> float | None`: training FLOPs (forward and backward) for
      one example of `shape` (a token model: `(T,)`; an image model: `(C, H, W)`); None when
      not worked out. MFU is reported only for models that give it.
    - `inputs`: what `apply` takes, so a task can refuse a model that does not fit it.
    - `data_fields`: config fields a task fills from its data when left None
      (`vocab_size`, `num_classes`).
    - `context(cfg)`: a token model's longest sequence, when it has one.
    - `activation_bytes(cfg, shape, remat) -> float`: an upper estimate of the bytes a fp32
      training step holds for one example of `shape` beyond params, gradients and optimizer
      state (saved activations, the backward's temporaries); `remat`: with activation
      checkpointing. None: not worked out (the memory planner then measures).
    """

    name: str
    config: type[BaseModel]
    init: Callable[..., Params]
    apply: Callable[..., torch.Tensor]
    param_count: Callable[[Any], int]
    inputs: Inputs
    flops_per_example: Callable[[Any, tuple[int, ...]], float | None] | None = None
    data_fields: tuple[str, ...] = ()
    context: Callable[[Any], int | None] | None = None
    """The longest sequence a token model accepts (None: no limit, e.g. an RNN)."""
    activation_bytes: Callable[[Any, tuple[int, ...], bool], float] | None = None
    """Per-example training memory beyond the state, for the memory planner (see above)."""
    shrink: Callable[..., tuple[Params, Any]] | None = None
    """Structured pruning, where the model has it: `shrink(params, cfg, *, mlp=share of MLP
    neurons, heads=heads per block) -> (params, cfg)` of a smaller dense model."""

    def flops(self, cfg: Any, shape: tuple[int, ...]) -> float | None:
        return None if self.flops_per_example is None else self.flops_per_example(cfg, shape)

    def max_length(self, cfg: Any) -> int | None:
        return None if self.context is None else self.context(cfg)


def lookup(
    registry: Mapping[str, ModelSpec], name: str, what: str = "TrainConfig.model"
) -> ModelSpec:
    """The spec registered as `name`, or a ConfigError that lists the close names."""
    if name in registry:
        return registry[name]
    raise ConfigError(f"{what} = {unknown_name('model', name, registry)}")


def check_images(images: torch.Tensor, channels: int, size: int) -> None:
    """Refuse a batch that is not `[B, channels, size, size]`, naming the expected shape."""
    expected = (channels, size, size)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(f"images of shape {tuple(images.shape)} do not fit [B, *{expected}]")
