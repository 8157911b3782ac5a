"""How good a diffusion checkpoint's samples are, measured locally with the reference judge.

`evaluate` on a diffusion checkpoint adds three numbers to the loss: `class_accuracy` (the
judge's accuracy on N samples asked for evenly spread classes, N / classes of each),
`frechet_distance` (between the judge's penultimate features of the N samples and of N test
images) and `frechet_floor` (the same distance from N training images to those test images:
what a perfect generator would score at this N). Distances depend on N: compare at one N.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from craft import tree
from craft.errors import ConfigError
from craft.inference import Loaded
from craft.judge import RECIPE, JudgeRecipe, ensure_judge
from craft.tasks.diffusion import Diffusion, cycled_labels
from craft.tasks.noise import to_unit_range
from craft.tasks.sample_quality import pick_evenly, sample_quality

CPU_SAMPLES, GPU_SAMPLES = 1_000, 10_000


def default_samples(device: torch.device) -> int:
    """N when not given: 1,000 on a CPU (a few minutes), 10,000 on a GPU."""
    return GPU_SAMPLES if device.type == "cuda" else CPU_SAMPLES


def score_samples(
    loaded: Loaded,
    task: Diffusion,
    *,
    num_samples: int | None,
    steps: int | None,
    guidance: float | None,
    sampler: str | None,
    seed: int,
    batch_size: int,
    device: torch.device,
    recipe: JudgeRecipe = RECIPE,
) -> dict[str, Any]:
    """The judge's numbers for `num_samples` samples (and what they were drawn with). The judge
    is trained on first use, under the task's data folder."""
    count = default_samples(device) if num_samples is None else num_samples
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"--num_samples={count!r} must be a whole number >= 1")
    test_pixels, test_labels = task.data.split("test")
    train_pixels, train_labels = task.data.split("train")
    most = min(len(test_labels), len(train_labels))
    if count > most:
        raise ConfigError(
            f"--num_samples={count} exceeds the {most:,} real images it is compared with "
            f"(the smaller of the test and train splits of {task.cfg.data_dir})"
        )
    judge = ensure_judge(task.cfg.data_dir, device=device, recipe=recipe)
    image_sampler = task.sampler
    labels = cycled_labels(count, image_sampler.classes)
    params = tree.tree_map(lambda p: p.to(device), loaded.params)
    apply = functools.partial(loaded.spec.apply, cfg=loaded.model_cfg)
    samples = image_sampler.draw(
        apply, params, labels, steps=steps, guidance=guidance,
        sampler=sampler,  # type: ignore[arg-type]
        seed=seed, batch_size=batch_size,
    )  # fmt: skip
    test_images, _ = pick_evenly(test_pixels, test_labels, count, seed=seed)
    train_images, _ = pick_evenly(train_pixels, train_labels, count, seed=seed)
    scores = sample_quality(judge, to_unit_range(samples), labels, test_images, train_images)
    cfg = image_sampler.cfg
    return {
        **scores,
        "num_samples": count,
        "sampler": sampler or cfg.sampler,
        "steps": cfg.sample_steps if steps is None else steps,
        "guidance": cfg.guidance if guidance is None else guidance,
        "seed": seed,
        "judge_test_accuracy": judge.record.get("test_accuracy"),
    }
