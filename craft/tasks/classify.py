"""`classify`: image classification with cross-entropy (MNIST).

Data: prepared uint8 image arrays (`craft.data.images`); batches `{"images" uint8 [B, C, H, W],
"labels" int64 [B]}`, drawn (and shifted, when asked) as a pure function of (seed, step). The
loss normalises the pixels on the device, so batches stay small. Metrics: loss and accuracy. A
checkpoint carries the class names and the normalisation. While training it draws a grid of
test digits with their predicted labels; at the end also a confusion matrix.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel

from craft import tree
from craft.data import images
from craft.data.config import ImageDataConfig
from craft.data.sources import prepared_images
from craft.errors import ConfigError, DataError
from craft.models.spec import ModelSpec
from craft.tasks.base import Apply, Batch, LossOut, Task, fill_field
from craft.tasks.image_previews import PredictionsHook
from craft.train.hooks import Hook
from craft.tree import Params


class Classification(Task):
    """Cross-entropy over class labels; accuracy in evaluation."""

    name = "classify"
    inputs = "images"
    unit = "images"
    config_names = ("ImageDataConfig",)
    final_splits = ("val", "test")

    def __init__(self, data: images.ImageData, cfg: ImageDataConfig, mean: float, std: float):
        self.data, self.cfg, self.mean, self.std = data, cfg, mean, std

    @classmethod
    def prepare(cls, configs: dict[str, BaseModel]) -> str:
        cfg = _config(configs)
        directory, downloaded = prepared_images(cfg.source, Path(cfg.data_dir))
        return f"{directory}: {'downloaded and prepared' if downloaded else 'cached'}"

    @classmethod
    def open(cls, configs: dict[str, BaseModel], *, verified: bool = False) -> Classification:
        cfg = _config(configs)
        directory, _ = prepared_images(cfg.source, Path(cfg.data_dir))
        data = images.open_images(directory, val_size=cfg.val_size)
        return cls(data, cfg, float(data.mean), float(data.std))

    @classmethod
    def for_checkpoint(
        cls, meta: dict[str, Any], directory: Path, data_dir: str | None
    ) -> Classification:
        stored = meta["task_meta"]
        cfg = ImageDataConfig.model_validate(
            {**meta["configs"].get("ImageDataConfig", {}), "data_dir": data_dir or "data"}
        )
        prepared = Path(cfg.data_dir) / "prepared" / cfg.source
        data = images.open_images(prepared, val_size=cfg.val_size)
        if list(data.class_names) != list(stored["class_names"]):
            raise DataError(
                f"{prepared} has classes {list(data.class_names)}, but the checkpoint was "
                f"trained on {stored['class_names']}"
            )
        return cls(data, cfg, float(stored["mean"]), float(stored["std"]))

    def train_batch(self, *, seed: int, step: int, size: int) -> Batch:
        pixels, labels = self.data.split("train")
        return images.train_batch(
            pixels, labels, seed=seed, step=step, size=size, max_shift=self.cfg.max_shift
        )

    def eval_batches(self, split: str, size: int) -> Iterator[Batch]:
        pixels, labels = self.data.split(split)
        return images.eval_batches(pixels, labels, size=size)

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

    def example_shape(self, spec: ModelSpec, cfg: BaseModel) -> tuple[int, ...]:
        return tuple(self.data.image_shape)

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

    def checkpoint_meta(self) -> dict[str, Any]:
        return {
            "class_names": list(self.data.class_names),
            "image_shape": list(self.data.image_shape),
            "mean": self.mean,
            "std": self.std,
        }

    def previews(self, trackers: Any, every: int) -> list[Hook]:
        return [PredictionsHook(self, every, trackers)]

    def describe(self) -> str:
        sizes = ", ".join(f"{s} {len(self.data.split(s)[1]):,}" for s in ("train", "val", "test"))
        return (
            f"{self.cfg.source}: {len(self.data.class_names)} classes, images "
            f"{'x'.join(map(str, self.data.image_shape))}; {sizes}"
        )


def _config(configs: dict[str, BaseModel]) -> ImageDataConfig:
    found = configs.get("ImageDataConfig") or ImageDataConfig()
    assert isinstance(found, ImageDataConfig)
    return found
