"""`classify`: image classification with cross-entropy (MNIST).

Data as every `ImageTask` has it; the loss normalises the pixels on the device, so batches stay
small. Metrics: loss and accuracy. While training it draws a grid of test digits with their
predicted labels; at the end also a confusion matrix.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel

from craft import tree
from craft.errors import ConfigError
from craft.models.spec import ModelSpec
from craft.tasks.base import Apply, Batch, LossOut, fill_field
from craft.tasks.image_previews import PredictionsHook
from craft.tasks.image_task import ImageTask
from craft.train.hooks import Hook
from craft.tree import Params


class Classification(ImageTask):
    """Cross-entropy over class labels; accuracy in evaluation."""

    name = "classify"
    inputs = "images"
    config_names = ("ImageDataConfig",)
    final_splits = ("val", "test")

    def fill_model_config(self, spec: ModelSpec, cfg: BaseModel) -> BaseModel:
        classes = len(self.data.class_names)
        cfg = fill_field(cfg, "num_classes", classes, "the dataset")
        shape = tuple(self.data.image_shape)
        params = tree.tree_map(lambda p: p.to("meta"), spec.init(cfg, seed=0))
        try:  # a dry run on the meta device: shapes only, no memory, no arithmetic
            out = spec.apply(params, torch.empty((2, *shape), device="meta"), cfg)
        except (RuntimeError, ValueError) as error:
            raise ConfigError(
                f"model {spec.name!r} does not take this dataset's images of shape {list(shape)} "
                f"(check {type(cfg).__name__}'s image_size and in_channels): {error}"
            ) from None
        if tuple(out.shape) != (2, classes):
            raise ConfigError(
                f"model {spec.name!r} gives outputs of shape {list(out.shape)[1:]} per image; "
                f"the {self.name!r} task needs one logit per class ({classes})"
            )
        return cfg

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels to floats with the training set's mean 0 and std 1."""
        return (pixels.float() * (1.0 / 255.0) - self.mean) * (1.0 / self.std)

    def loss(
        self, apply: Apply, params: Params, batch: Batch, *, rng: torch.Tensor | None
    ) -> LossOut:
        labels = batch["labels"]
        logits = apply(params, self.normalize(batch["images"]), rng=rng)
        loss = F.cross_entropy(logits.float(), labels)
        count = torch.full((), labels.shape[0], dtype=torch.int64, device=labels.device)
        return loss, {"weight": count, "correct": (logits.argmax(-1) == labels).sum()}

    def summarize(self, sums: dict[str, float], split: str, *, whole: bool) -> dict[str, float]:
        count = max(sums["weight"], 1.0)
        return {
            "loss": sums["loss_sum"] / count,
            "accuracy": sums.get("correct", 0.0) / count,
            "images": sums["weight"],
        }

    def previews(self, trackers: Any, every: int) -> list[Hook]:
        return [PredictionsHook(self, every, trackers)]
