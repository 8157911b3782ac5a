"""MNIST diffusion: Craft's training step and sampler against a conventional PyTorch loop.

Both train the U-Net of gin/mnist_diffusion.gin from the same initial params on the same image
batches, with the same hyperparameters (AdamW, warmup + cosine, clipping, an EMA of the params):
Craft through its diffusion task and compiled step (noise and timesteps from keys, the EMA
inside the compiled update); the baseline as an `nn.Module` compiled with `torch.compile(model)`,
`torch.optim.AdamW`, noise from the global generator and the EMA through
`torch.optim.swa_utils.AveragedModel`. Then both draw images with 50 DDIM steps and guidance
(Craft's sampler; the baseline's plain loop over its compiled module). Output: training
images/s (steady, after the compiling steps), the first step's seconds (compile), sampling
images/s and the ratios, as JSON lines and a table.

    .venv/bin/python benchmarks/diffusion.py [--steps N] [--samples N] [--threads K]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import craft.launch  # noqa: E402, F401  (registers every configurable the gin files bind)
from benchmarks.baseline_unet import baseline_unet  # noqa: E402
from benchmarks.conventional import torch_adamw  # noqa: E402
from craft import config  # noqa: E402
from craft.optim import AdamW, Schedule  # noqa: E402
from craft.tasks import Diffusion  # noqa: E402
from craft.tasks.diffusion import cycled_labels  # noqa: E402
from craft.tasks.noise import to_model_range  # noqa: E402
from craft.train.hooks import Hook, RunInfo  # noqa: E402
from craft.train.loop import Setup, fit, make_setup  # noqa: E402

WARMUP = 10  # steps left out of the steady rate (compiling, the allocator settling)


def craft_train(setup: Setup) -> dict[str, Any]:
    times: list[float] = []

    class Probe(Hook):
        def on_step_end(self, run: RunInfo, step: int, metrics: dict[str, float]) -> None:
            times.append(metrics["step_time_s"])

    with tempfile.TemporaryDirectory() as tmp:
        fit(setup, Path(tmp), hooks=[Probe()])
    return _rates(times, setup.train.batch_size)


def conventional_train(setup: Setup, task: Diffusion) -> tuple[dict[str, Any], Any]:
    train, adamw, schedule = setup.train, setup.optimizer, setup.schedule
    assert isinstance(adamw, AdamW) and isinstance(schedule, Schedule)
    model = baseline_unet(setup.spec.init(setup.model_cfg, seed=setup.seed), setup.model_cfg)
    optimizer, lr_of = torch_adamw(model, adamw, schedule)
    decay_rate = train.ema_decay or 0.999
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay_rate)
    )
    forward = torch.compile(model)
    diffusion = task.diffusion
    table = task.sampler.alphas_bar.float()
    generator = torch.Generator().manual_seed(setup.seed)
    times = []
    for step in range(train.steps):
        batch = task.train_batch(seed=setup.seed, step=step, size=train.batch_size)
        tick = time.perf_counter()
        x0, labels = to_model_range(batch["images"]), batch["labels"]
        t = torch.randint(0, diffusion.timesteps, (len(labels),), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        dropped = torch.rand(len(labels), generator=generator) < diffusion.label_dropout
        labels = torch.where(dropped, torch.full_like(labels, task.null_label), labels)
        ab = table[t].view(-1, 1, 1, 1)
        loss = F.mse_loss(forward(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t, labels), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.clip_norm or math.inf)
        optimizer.step()
        lr_of.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update_parameters(model)
        times.append(time.perf_counter() - tick)
    return _rates(times, train.batch_size), ema.module


@torch.no_grad()
def craft_sampling(setup: Setup, task: Diffusion, count: int, steps: int) -> float:
    params = setup.spec.init(setup.model_cfg, seed=setup.seed)
    apply = functools.partial(setup.spec.apply, cfg=setup.model_cfg)
    labels = cycled_labels(count, task.sampler.classes)
    task.sampler.draw(apply, params, labels[:count], steps=2, batch_size=count, compile=True)
    tick = time.perf_counter()
    task.sampler.draw(apply, params, labels, steps=steps, batch_size=count, compile=True)
    return count / (time.perf_counter() - tick)


@torch.no_grad()
def conventional_sampling(model: Any, task: Diffusion, count: int, steps: int) -> float:
    """The usual DDIM loop: a compiled module, guidance by a doubled batch, the update inline."""
    model.eval()
    forward = torch.compile(model)
    table = task.sampler.alphas_bar.float()
    w, null = task.diffusion.guidance, task.null_label
    labels = cycled_labels(count, task.sampler.classes)

    def draw(steps: int) -> torch.Tensor:
        x = torch.randn(count, *task.sampler.image_shape)
        ts = torch.linspace(len(table) - 1, 0, steps).round().long().tolist()
        for index, t in enumerate(ts):
            tt = torch.full((2 * count,), t)
            eps_c, eps_u = forward(torch.cat([x, x]), tt, torch.cat(
                [labels, torch.full_like(labels, null)])).chunk(2)  # fmt: skip
            eps = eps_c + w * (eps_c - eps_u)
            ab, ab_prev = table[t], table[ts[index + 1]] if index + 1 < len(ts) else 1.0
            x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
            eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
            x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
        return x

    draw(2)
    tick = time.perf_counter()
    draw(steps)
    return count / (time.perf_counter() - tick)


def _rates(times: list[float], batch_size: int) -> dict[str, Any]:
    steady = times[WARMUP:] or times
    return {
        "first_step_s": round(times[0], 1),
        "steady_images_per_s": round(batch_size / statistics.median(steady), 1),
        "train_s": round(sum(times), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--samples", type=int, default=100, help="images drawn by each sampler")
    parser.add_argument("--sample_steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = [f"TrainConfig.steps = {args.steps}", "TrainConfig.eval_every = 0",
                 "TrainConfig.checkpoint_every = 0", "TrainConfig.sample_every = 0",
                 "TrainConfig.eval_batches = 1", "Schedule.warmup_steps = 5",
                 "MetricsConfig.progress_bar = False", "MetricsConfig.wandb = 'disabled'",
                 "DiffusionConfig.preview_per_class = 1",
                 "DiffusionConfig.sample_steps = 2"]  # fmt: skip
    config.parse([REPO / "gin" / "mnist_diffusion.gin"], overrides)
    configs = config.build_all()
    Diffusion.prepare(configs)
    task = Diffusion.open(configs)
    setup = make_setup(configs, task, seed=0)
    device = f"cpu ({torch.get_num_threads()} threads)"
    craft_rates = craft_train(setup)
    base_rates, base_model = conventional_train(setup, task)
    rows = [
        {"impl": "craft", **craft_rates,
         "sampling_images_per_s": round(craft_sampling(setup, task, args.samples,
                                                       args.sample_steps), 1)},
        {"impl": "conventional (torch.compile)", **base_rates,
         "sampling_images_per_s": round(conventional_sampling(base_model, task, args.samples,
                                                              args.sample_steps), 1)},
    ]  # fmt: skip
    for row in rows:
        row.update(device=device, torch=torch.__version__, model=setup.spec.name,
                   params=setup.spec.param_count(setup.model_cfg),
                   batch_size=setup.train.batch_size, steps=args.steps,
                   sample_steps=args.sample_steps, samples=args.samples)  # fmt: skip
        print(json.dumps(row), flush=True)
    print(f"\n{'impl':30} {'first step':>10} {'train img/s':>12} {'sample img/s':>13}")
    for row in rows:
        print(f"{row['impl']:30} {row['first_step_s']:9.1f}s {row['steady_images_per_s']:12,.1f}"
              f" {row['sampling_images_per_s']:13,.1f}")  # fmt: skip
    craft_row, base = rows
    print(
        f"craft / conventional: training "
        f"{craft_row['steady_images_per_s'] / base['steady_images_per_s']:.2f}x, sampling "
        f"{craft_row['sampling_images_per_s'] / base['sampling_images_per_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
