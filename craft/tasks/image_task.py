"""`ImageTask`: what the image tasks (classify, diffusion) share: a labelled image dataset.

Data: prepared uint8 image arrays (`craft.data.images`); batches `{"images" uint8 [B, C, H, W],
"labels" int64 [B]}`, drawn (and shifted, when asked) as a pure function of (seed, step). A
checkpoint carries the class names, the image shape and the pixel statistics. A subclass adds
its loss, metrics and previews, and its own config beside `ImageDataConfig` (`_from_configs`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from craft.data import images
from craft.data.config import ImageDataConfig
from craft.data.sources import prepared_images
from craft.errors import DataError
from craft.models.spec import ModelSpec
from craft.tasks.base import Batch, Task

T = TypeVar("T", bound="ImageTask")


class ImageTask(Task):
    """A task over a labelled image dataset; subclasses give the loss and what it shows."""

    unit = "images"

    def __init__(
        self, data: images.ImageData, cfg: ImageDataConfig, mean: float, std: float,
        configs: dict[str, BaseModel],
    ):  # fmt: skip
        """`configs`: the task's own validated configs besides `ImageDataConfig`, by name."""
        self.data, self.cfg, self.mean, self.std = data, cfg, mean, std
        self.configs = configs

    @classmethod
    def own_configs(cls, raw: dict[str, Any]) -> dict[str, BaseModel]:
        """The task's configs besides `ImageDataConfig`, from configs by name (objects when
        training, JSON dicts from a checkpoint's record)."""
        return {}

    @classmethod
    def prepare(cls, configs: dict[str, BaseModel]) -> str:
        cfg = image_config(configs)
        directory, downloaded = prepared_images(cfg.source, Path(cfg.data_dir))
        return f"{directory}: {'downloaded and prepared' if downloaded else 'cached'}"

    @classmethod
    def open(cls: type[T], configs: dict[str, BaseModel], *, verified: bool = False) -> T:
        cfg = image_config(configs)
        directory, _ = prepared_images(cfg.source, Path(cfg.data_dir))
        data = images.open_images(directory, val_size=cfg.val_size)
        return cls(data, cfg, float(data.mean), float(data.std), cls.own_configs(configs))

    @classmethod
    def for_checkpoint(
        cls: type[T], meta: dict[str, Any], directory: Path, data_dir: str | None
    ) -> T:
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
        own = cls.own_configs(meta["configs"])
        return cls(data, cfg, float(stored["mean"]), float(stored["std"]), own)

    def train_batch(self, *, seed: int, step: int, size: int) -> Batch:
        pixels, labels = self.data.split("train")
        return images.train_batch(
            pixels, labels, seed=seed, step=step, size=size, max_shift=self.cfg.max_shift
        )

    def eval_batches(self, split: str, size: int) -> Iterator[Batch]:
        pixels, labels = self.data.split(split)
        return images.eval_batches(pixels, labels, size=size)

    def example_shape(self, spec: ModelSpec, cfg: BaseModel) -> tuple[int, ...]:
        return tuple(self.data.image_shape)

    def checkpoint_meta(self) -> dict[str, Any]:
        return {
            "class_names": list(self.data.class_names),
            "image_shape": list(self.data.image_shape),
            "mean": self.mean,
            "std": self.std,
        }

    def describe(self) -> str:
        sizes = ", ".join(f"{s} {len(self.data.split(s)[1]):,}" for s in ("train", "val", "test"))
        return (
            f"{self.cfg.source}: {len(self.data.class_names)} classes, images "
            f"{'x'.join(map(str, self.data.image_shape))}; {sizes}"
        )


def image_config(configs: dict[str, BaseModel]) -> ImageDataConfig:
    found = configs.get("ImageDataConfig") or ImageDataConfig()
    assert isinstance(found, ImageDataConfig)
    return found
