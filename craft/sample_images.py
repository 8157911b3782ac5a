"""The `sample` command's work: images from a diffusion checkpoint, checked flags, files out."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from craft import tree
from craft.errors import ConfigError
from craft.inference import COMMAND_FOR, Loaded
from craft.tasks.diffusion import ImageSampler, cycled_labels
from craft.tasks.diffusion_previews import write_grid
from craft.tasks.noise import to_unit_range


def diffusion_sampler(loaded: Loaded, command: str) -> ImageSampler:
    """The sampler of a diffusion checkpoint; a clear refusal for any other kind."""
    if loaded.task_name != "diffusion":
        other = COMMAND_FOR.get(loaded.task_name)
        raise ConfigError(
            f"{command} draws images from a diffusion checkpoint, but {loaded.path} holds a "
            f"{loaded.model_name!r} model trained for the {loaded.task_name!r} task"
            + (f"; use {other}" if other else "")
        )
    return ImageSampler.from_record(loaded.meta)


def check_options(
    sampler: ImageSampler, *, steps: int | None, guidance: float | None, kind: str | None,
    label: int | None = None,
) -> None:  # fmt: skip
    """Refuse sampling flags outside what the checkpoint's model and schedule allow."""
    classes, total = sampler.classes, sampler.cfg.timesteps
    if label is not None and (isinstance(label, bool) or not isinstance(label, int)
                              or not 0 <= label < classes):  # fmt: skip
        raise ConfigError(
            f"--label={label!r} is not a class of this model: give 0 to {classes - 1}, or leave "
            "it out to draw every class"
        )
    if steps is not None and (not isinstance(steps, int) or not 1 <= steps <= total):
        raise ConfigError(
            f"--steps={steps!r} must be a whole number from 1 to {total} (the schedule's length)"
        )
    if guidance is not None and (not isinstance(guidance, (int, float)) or guidance < 0):
        raise ConfigError(f"--guidance={guidance!r} must be a number >= 0 (0: no guidance)")
    if kind is not None and kind not in ("ddim", "ddpm"):
        raise ConfigError(f"--sampler={kind!r} is not a sampler: give ddim or ddpm")


def device_for_sampling() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def apply_of(loaded: Loaded) -> Any:
    """The model's apply with its config bound: `apply(params, inputs, **kwargs)`."""
    return functools.partial(loaded.spec.apply, cfg=loaded.model_cfg)


def sample_to_files(
    loaded: Loaded,
    output: Path,
    *,
    num_samples: int,
    label: int | None,
    steps: int | None,
    guidance: float | None,
    sampler: str | None,
    seed: int,
    save_tensors: bool,
    batch_size: int,
    compile: bool,
) -> list[Path]:
    """Draw `num_samples` images (of `label`, or cycling through every class) and write the
    PNG grid at `output` (and `<output>.safetensors` with the images and labels)."""
    image_sampler = diffusion_sampler(loaded, "sample")
    for flag, value in (("num_samples", num_samples), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"--{flag}={value!r} must be a whole number >= 1")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"--seed={seed!r} must be a whole number")
    check_options(image_sampler, steps=steps, guidance=guidance, kind=sampler, label=label)
    if output.suffix.lower() != ".png":
        raise ConfigError(f"--output={output} must name a .png file")
    classes = image_sampler.classes
    labels = (
        torch.full((num_samples,), label, dtype=torch.int64)
        if label is not None
        else cycled_labels(num_samples, classes)
    )
    device = device_for_sampling()
    params = tree.tree_map(lambda p: p.to(device), loaded.params)
    images = image_sampler.draw(
        apply_of(loaded), params, labels, steps=steps, guidance=guidance,
        sampler=sampler,  # type: ignore[arg-type]
        seed=seed, batch_size=batch_size, compile=compile,
    )  # fmt: skip
    unit = to_unit_range(images).cpu()
    columns = classes if label is None else min(num_samples, 8)
    written = [write_grid(output, unit, columns)]
    if save_tensors:
        tensors_path = output.with_suffix(".safetensors")
        save_file({"images": unit.contiguous(), "labels": labels}, str(tensors_path))
        written.append(tensors_path)
    return written
