"""MNIST: Craft's default run against a conventional PyTorch loop, in one process, same data.

Both train the CNN of gin/mnist.gin from the same initial params with the same hyperparameters
(AdamW, no decay on biases, warmup + cosine, clipping, random shifts): Craft through its task and
compiled step; the baseline as an `nn.Module` compiled with `torch.compile(model)`, `torch.optim`
and a shuffling `DataLoader` over the same arrays. Every `--eval_every` steps both measure test
accuracy (that time is left out of the clocks), so the output gives images/s, the training time
to 99 % test accuracy (compile included) and the final accuracy, as JSON lines and a table.

    .venv/bin/python benchmarks/mnist.py [--steps N] [--eval_every K] [--eager_baseline]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import craft.launch  # noqa: E402, F401  (registers every configurable the gin files bind)
from benchmarks.baseline_cnn import baseline_cnn  # noqa: E402
from benchmarks.conventional import torch_adamw  # noqa: E402
from craft import config  # noqa: E402
from craft.optim import AdamW, Schedule  # noqa: E402
from craft.tasks import Classification  # noqa: E402
from craft.train.config import TrainConfig  # noqa: E402
from craft.train.evaluate import evaluate  # noqa: E402
from craft.train.hooks import Hook, RunInfo  # noqa: E402
from craft.train.loop import fit, make_setup  # noqa: E402

TARGET = 0.99


class Clock:
    """Training seconds (compile included, evaluations excluded) and test accuracy by step."""

    def __init__(self) -> None:
        self.train_s = 0.0
        self.images = 0
        self.steady: list[float] = []  # images/s of steps after the first 20 (compiled)
        self.curve: list[tuple[int, float, float]] = []  # (step, train seconds, accuracy)

    def reached(self) -> float | None:
        return next((seconds for _, seconds, acc in self.curve if acc >= TARGET), None)


def craft_run(configs: dict[str, Any], eval_every: int) -> Clock:
    task = Classification.open(configs)
    setup = make_setup(configs, task, seed=0)
    clock = Clock()

    class Probe(Hook):
        def on_step_end(self, run: RunInfo, step: int, metrics: dict[str, float]) -> None:
            clock.train_s += metrics["step_time_s"]
            clock.images += int(metrics["images"])
            if step > 20:
                clock.steady.append(metrics["images_per_s"])
            if step % eval_every == 0 or step == run.total_steps:
                assert run.read_state is not None
                loss_fn = functools.partial(
                    task.loss, functools.partial(setup.spec.apply, cfg=setup.model_cfg)
                )
                acc = evaluate(task, loss_fn, run.read_state().params, "test", batch_size=1000)
                clock.curve.append((step, clock.train_s, acc["accuracy"]))

    with tempfile.TemporaryDirectory() as tmp:
        fit(setup, Path(tmp), hooks=[Probe()])
    return clock


def conventional_run(configs: dict[str, Any], eval_every: int, compile_model: bool) -> Clock:
    task = Classification.open(configs)
    setup = make_setup(configs, task, seed=0)
    train: TrainConfig = setup.train
    adamw, schedule = setup.optimizer, setup.schedule
    assert isinstance(adamw, AdamW) and isinstance(schedule, Schedule)
    torch.manual_seed(0)
    model = baseline_cnn(setup.spec.init(setup.model_cfg, seed=0), setup.model_cfg)
    optimizer, lr_of = torch_adamw(model, adamw, schedule)
    images, labels = task.data.split("train")
    dataset = torch.utils.data.TensorDataset(
        torch.from_numpy(np.array(images)), torch.from_numpy(np.array(labels, dtype=np.int64))
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=train.batch_size, shuffle=True, drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    test_x, test_y = (torch.from_numpy(np.array(a)) for a in task.data.split("test"))
    forward = torch.compile(model) if compile_model else model
    shift = task.cfg.max_shift
    clock = Clock()
    step = 0
    while step < train.steps:
        for x, y in loader:
            tick = time.perf_counter()
            if shift:
                x = _random_shift(x, shift)
            loss = F.cross_entropy(forward(task.normalize(x)), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.clip_norm or math.inf)
            optimizer.step()
            lr_of.step()
            optimizer.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - tick
            step += 1
            clock.train_s += elapsed
            clock.images += len(y)
            if step > 20:
                clock.steady.append(len(y) / elapsed)
            if step % eval_every == 0 or step == train.steps:
                clock.curve.append((step, clock.train_s, _accuracy(model, task, test_x, test_y)))
            if step == train.steps:
                break
    return clock


def _random_shift(x: torch.Tensor, shift: int) -> torch.Tensor:
    """The usual per-image loop: pad, then crop each image at a random offset."""
    padded = F.pad(x, (shift, shift, shift, shift))
    h, w = x.shape[-2:]
    offsets = torch.randint(0, 2 * shift + 1, (len(x), 2))
    return torch.stack(
        [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())]
    )


@torch.no_grad()
def _accuracy(model: torch.nn.Module, task: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(
        int((model(task.normalize(x[i : i + 1000])).argmax(-1) == y[i : i + 1000]).sum())
        for i in range(0, len(y), 1000)
    )
    model.train()
    return correct / len(y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="default: gin/mnist.gin's")
    parser.add_argument("--eval_every", type=int, default=250)
    parser.add_argument("--eager_baseline", action="store_true", help="also the eager nn.Module")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = ["TrainConfig.eval_every = 0", "TrainConfig.checkpoint_every = 0",
                 "TrainConfig.sample_every = 0"]  # fmt: skip
    if args.steps:
        overrides.append(f"TrainConfig.steps = {args.steps}")
    config.parse([REPO / "gin" / "mnist.gin"], overrides)
    configs = config.build_all()
    Classification.prepare(configs)
    rows = []
    runs: list[tuple[str, Any]] = [
        ("craft", lambda: craft_run(configs, args.eval_every)),
        ("conventional (torch.compile)", lambda: conventional_run(configs, args.eval_every, True)),
    ]
    if args.eager_baseline:
        runs.append(
            ("conventional (eager)", lambda: conventional_run(configs, args.eval_every, False))
        )
    for name, run in runs:
        clock = run()
        row = {
            "impl": name,
            "train_s": round(clock.train_s, 1),
            "images_per_s": round(clock.images / clock.train_s),
            "steady_images_per_s": round(float(np.median(clock.steady))) if clock.steady else None,
            "seconds_to_99": None if clock.reached() is None else round(clock.reached() or 0, 1),
            "final_test_accuracy": clock.curve[-1][2],
            "curve": [(s, round(t, 1), round(a, 4)) for s, t, a in clock.curve],
            "device": f"cpu ({torch.get_num_threads()} threads)",
            "torch": torch.__version__,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[1]
    print(f"\n{'impl':32} {'images/s':>9} {'steady':>8} {'to 99%':>8} {'test acc':>9}")
    for row in rows:
        to99 = "-" if row["seconds_to_99"] is None else f"{row['seconds_to_99']:.0f} s"
        print(f"{row['impl']:32} {row['images_per_s']:9,} {row['steady_images_per_s'] or 0:8,} "
              f"{to99:>8} {row['final_test_accuracy']:9.2%}")  # fmt: skip
    ratio = rows[0]["steady_images_per_s"] / base["steady_images_per_s"]
    print(f"craft / conventional (torch.compile), steady images/s: {ratio:.2f}x")


if __name__ == "__main__":
    main()
