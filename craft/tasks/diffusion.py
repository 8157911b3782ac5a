"""`diffusion`: a class-conditional DDPM over a labelled image dataset (MNIST).

Training (Ho et al. 2020): each image gets a timestep t and noise ε, is noised to x_t, and the
model learns to predict ε (mean squared error). With probability `label_dropout` its label is
replaced by the 'no label' id (`num_classes`), so one model is both conditional and
unconditional: what classifier-free guidance needs (Ho & Salimans 2022).

t, ε and the label drop come from the step's row keys (a pure function of seed, step and global
row), so a resumed run is bit-exact and the draws do not depend on how the batch is split over
ranks and micro-batches. Evaluation draws them from each image's index in its split: the val
loss is measured with the same noise at every evaluation, so it compares across steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from craft import tree
from craft.config import configurable
from craft.errors import ConfigError
from craft.models.spec import ModelSpec
from craft.nn.random import fold_in, key, normal, uniform
from craft.tasks import samplers
from craft.tasks.base import Apply, Batch, LossOut, fill_field
from craft.tasks.diffusion_previews import SamplesHook
from craft.tasks.image_task import ImageTask
from craft.tasks.noise import ScheduleKind, alphas_bar, q_sample, to_model_range
from craft.tasks.samplers import SamplerKind
from craft.train.hooks import Hook
from craft.tree import Params

EVAL_SEED = 0x5EED  # evaluation's noise: fixed, so every evaluation sees the same draws
_T, _NOISE, _DROP, _MODEL = 0, 1, 2, 3  # what each row key is folded with


@configurable
class DiffusionConfig(BaseModel):
    """The noise schedule, classifier-free guidance and how samples are drawn."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    schedule: ScheduleKind = "linear"
    """linear (Ho et al.: β from beta_start to beta_end) or cosine (Nichol & Dhariwal)."""
    timesteps: int = Field(1000, ge=2)
    """T: the length of the forward process."""
    beta_start: float = Field(1e-4, gt=0, lt=1)
    beta_end: float = Field(0.02, gt=0, lt=1)
    label_dropout: float = Field(0.1, ge=0, lt=1)
    """The share of training images whose label is dropped (the unconditional model)."""
    sampler: SamplerKind = "ddim"
    """For previews and evaluation: ddim (deterministic) or ddpm (ancestral)."""
    sample_steps: int = Field(50, ge=1)
    """Denoising steps for previews and evaluation."""
    guidance: float = Field(2.0, ge=0)
    """Classifier-free guidance scale w for previews and evaluation (0: conditional only)."""
    preview_per_class: int = Field(8, ge=1)
    """Samples per class in the preview grid (one row per class)."""

    @model_validator(mode="after")
    def _consistent(self) -> DiffusionConfig:
        if self.schedule == "linear" and self.beta_start > self.beta_end:
            raise ValueError(
                f"beta_start={self.beta_start} must not exceed beta_end={self.beta_end}"
            )
        if self.sample_steps > self.timesteps:
            raise ValueError(f"sample_steps={self.sample_steps} exceeds timesteps={self.timesteps}")
        return self


class Diffusion(ImageTask):
    """ε-prediction DDPM, class-conditional with label dropout; loss: MSE on ε."""

    name = "diffusion"
    inputs = "noisy_images"
    config_names = ("ImageDataConfig", "DiffusionConfig")
    final_splits = ("val",)  # sample quality (evaluate) says more than a test-split loss

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.sampler = ImageSampler(
            self.diffusion, tuple(self.data.image_shape), len(self.data.class_names)
        )
        # ᾱ as the loss reads it; moved to the batch's device in the step (a no-op on the CPU).
        # Not cached per device: a dict filled inside the compiled step recompiles it.
        self.table = self.sampler.alphas_bar.float()

    @classmethod
    def own_configs(cls, raw: dict[str, Any]) -> dict[str, BaseModel]:
        found = raw.get("DiffusionConfig")
        if isinstance(found, DiffusionConfig):
            return {"DiffusionConfig": found}
        return {"DiffusionConfig": DiffusionConfig.model_validate(found or {})}

    @property
    def diffusion(self) -> DiffusionConfig:
        cfg = self.configs["DiffusionConfig"]
        assert isinstance(cfg, DiffusionConfig)
        return cfg

    @property
    def null_label(self) -> int:
        """The 'no label' id: one past the last class."""
        return self.sampler.classes

    def eval_batches(self, split: str, size: int) -> Iterator[Batch]:
        start = 0
        for batch in super().eval_batches(split, size):
            count = len(batch["labels"])
            yield {**batch, "index": torch.arange(start, start + count)}
            start += count

    def fill_model_config(self, spec: ModelSpec, cfg: BaseModel) -> BaseModel:
        cfg = fill_field(cfg, "num_classes", len(self.data.class_names), "the dataset")
        shape = tuple(self.data.image_shape)
        with torch.device("meta"):  # a dry run: shapes only, no memory, no arithmetic
            params = spec.init(cfg, seed=0)
            inputs = {
                "images": torch.empty((2, *shape)),
                "t": torch.zeros(2, dtype=torch.int64),
                "labels": torch.zeros(2, dtype=torch.int64),
            }
            try:
                out = spec.apply(params, inputs, cfg)
            except (RuntimeError, ValueError) as error:
                raise ConfigError(
                    f"model {spec.name!r} does not take this dataset's images of shape "
                    f"{list(shape)} (check {type(cfg).__name__}'s image_size and in_channels): "
                    f"{error}"
                ) from None
        if tuple(out.shape) != (2, *shape):
            raise ConfigError(
                f"model {spec.name!r} gives outputs of shape {list(out.shape)[1:]} per image; "
                f"the {self.name!r} task needs a noise prediction shaped like the image "
                f"{list(shape)}"
            )
        return cfg

    def loss(
        self, apply: Apply, params: Params, batch: Batch, *, rng: torch.Tensor | None
    ) -> LossOut:
        pixels, labels = batch["images"], batch["labels"]
        rows = labels.shape[0]
        training = rng is not None
        if rng is None:  # evaluation: each image's draws follow its index in the split
            rng = fold_in(key(EVAL_SEED).to(labels.device), batch["index"])
        cfg = self.diffusion
        t = (uniform(fold_in(rng, _T), (rows,)) * cfg.timesteps).long()
        t = t.clamp_(max=cfg.timesteps - 1)
        x0 = to_model_range(pixels)
        noise = normal(fold_in(rng, _NOISE), x0.shape)
        if training and cfg.label_dropout > 0:
            dropped = uniform(fold_in(rng, _DROP), (rows,)) < cfg.label_dropout
            labels = torch.where(dropped, torch.full_like(labels, self.null_label), labels)
        x_t = q_sample(x0, t, noise, self.table.to(x0.device))
        inputs = {"images": x_t, "t": t, "labels": labels}
        predicted = apply(params, inputs, rng=fold_in(rng, _MODEL) if training else None)
        loss = F.mse_loss(predicted.float(), noise)
        return loss, {"weight": torch.full((), rows, dtype=torch.int64, device=labels.device)}

    def summarize(self, sums: dict[str, float], split: str, *, whole: bool) -> dict[str, float]:
        count = max(sums["weight"], 1.0)
        return {"loss": sums["loss_sum"] / count, "images": sums["weight"]}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {**super().checkpoint_meta(), "null_label": self.null_label}

    def previews(self, trackers: Any, every: int) -> list[Hook]:
        return [SamplesHook(self, every, trackers)]


class ImageSampler:
    """Draws images from a trained diffusion model: what a checkpoint's record says (the
    schedule, the image shape, the classes) without the dataset, so `sample` needs no data."""

    def __init__(self, cfg: DiffusionConfig, image_shape: tuple[int, ...], classes: int):
        self.cfg, self.image_shape, self.classes = cfg, image_shape, classes
        self.alphas_bar = alphas_bar(cfg.schedule, cfg.timesteps, cfg.beta_start, cfg.beta_end)

    @classmethod
    def from_record(cls, meta: dict[str, Any]) -> ImageSampler:
        """From a diffusion checkpoint's record (`CheckpointMeta.as_dict()`)."""
        stored = meta["task_meta"]
        cfg = DiffusionConfig.model_validate(meta["configs"].get("DiffusionConfig", {}))
        shape = tuple(int(size) for size in stored["image_shape"])
        return cls(cfg, shape, len(stored["class_names"]))

    @torch.no_grad()
    def draw(
        self,
        apply: Apply,
        params: Params,
        labels: torch.Tensor,
        *,
        steps: int | None = None,
        guidance: float | None = None,
        sampler: SamplerKind | None = None,
        seed: int = 0,
        batch_size: int = 500,
        compile: bool = False,
    ) -> torch.Tensor:
        """Images in [-1, 1], one per label (on the params' device), drawn in batches; image i
        is the same whatever the batch size. Unset options come from `DiffusionConfig`."""
        cfg = self.cfg
        device = tree.leaves(params)[0].device
        labels = labels.to(device)

        def denoise(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return apply(params, {"images": x, "t": t, "labels": y})

        options = {
            "steps": cfg.sample_steps if steps is None else steps,
            "seed": seed,
            "kind": sampler or cfg.sampler,
            "guidance": cfg.guidance if guidance is None else guidance,
            "null_label": self.classes,
            "compile": compile,
        }
        parts = [
            samplers.sample(
                denoise,
                self.alphas_bar,
                labels[start : start + batch_size],
                self.image_shape,
                first_index=start,
                **options,  # type: ignore[arg-type]
            )
            for start in range(0, len(labels), batch_size)
        ]
        return torch.cat(parts) if parts else torch.empty((0, *self.image_shape), device=device)

    def grid_labels(self, per_class: int, label: int | None = None) -> torch.Tensor:
        """Labels for a grid: `per_class` of each class in class order, or of `label` only."""
        classes = [label] if label is not None else range(self.classes)
        return torch.tensor([c for c in classes for _ in range(per_class)], dtype=torch.int64)


def cycled_labels(count: int, classes: int) -> torch.Tensor:
    """`count` labels cycling through the classes (0, 1, ..., classes-1, 0, 1, ...): evenly
    spread, and in a grid of `classes` columns each column is one class."""
    return torch.arange(count, dtype=torch.int64) % classes
