"""The ChatGOT char quality bar: Craft's default run against a conventional PyTorch loop.

Craft: `python -m craft.main --gin_file=gin/got_char.gin` (a fresh process: compile, W&B offline,
metrics, samples and checkpoints included). Conventional loop, same process kind: `BaselineGPT`
(an nn.Module with the same shape), `torch.optim.AdamW` (decay on matrices only, like Craft's),
the same warmup + cosine schedule, clipping, batches and evaluations (every 250 steps and at the
end, over the whole val split), eager by default (`--compile` for `torch.compile(model)`).

Run: .venv/bin/python benchmarks/got_char_quality.py [--skip-craft] [--compile] [--cold]
Prints both wall times and final val losses as JSON lines. Target: val loss <= 1.48 and Craft's
time <= the conventional loop's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import craft.launch  # noqa: E402, F401  (registers every configurable the gin files bind)
from benchmarks.baseline_gpt import BaselineGPT, load_craft_params  # noqa: E402
from craft import config  # noqa: E402
from craft.data.datasets import eval_batches, train_batch  # noqa: E402
from craft.data.prepare import default_prepared_dir, open_split, read_meta  # noqa: E402
from craft.models import gpt  # noqa: E402
from craft.optim import AdamW, Schedule  # noqa: E402
from craft.train.config import TrainConfig  # noqa: E402

GIN = REPO / "gin" / "got_char.gin"


def craft_run(overrides: list[str], cold: bool) -> dict[str, object]:
    """The CLI in a fresh process; the data is prepared beforehand so neither side pays for it.
    `cold`: with an empty inductor cache (a new TORCHINDUCTOR_CACHE_DIR), as after an install."""
    command = [sys.executable, "-m", "craft.main", f"--gin_file={GIN}", *overrides]
    subprocess.run([*command, "show_config"], capture_output=True, check=True, cwd=REPO)
    subprocess.run(
        [sys.executable, "-m", "craft.main", "prepare", "--input=got"],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    with tempfile.TemporaryDirectory(prefix="craft-inductor-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache} if cold else None
        start = time.perf_counter()
        result = subprocess.run(
            [*command, "--gin.MetricsConfig.progress_bar=False"], capture_output=True,
            text=True, check=False, cwd=REPO, env=env,
        )  # fmt: skip
        seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"craft run failed:\n{result.stderr[-3000:]}")
    lines = result.stdout.splitlines()
    val = next(x for x in lines if x.startswith("val: loss"))
    status = next(x for x in lines if x.startswith("status:"))
    return {
        "impl": "craft",
        "seconds": round(seconds, 1),
        "loop_seconds": float(status.split(" in ")[1].split()[0]),
        "val_loss": float(val.split()[2].rstrip(",")),  # "val: loss 1.3900, perplexity ..."
        "overrides": overrides,
        "inductor_cache": "cold" if cold else "as found",
    }


@torch.no_grad()
def val_loss(model: BaselineGPT, tokens: object, block_size: int) -> float:
    model.eval()
    nats, count = 0.0, 0
    for batch in eval_batches(tokens, window=block_size, batch_size=64):  # type: ignore[arg-type]
        n = int((batch["targets"] >= 0).sum())
        nats += float(model(batch["inputs"], batch["targets"])) * n
        count += n
    model.train()
    return nats / count


def conventional_run(compile_model: bool) -> dict[str, object]:
    start = time.perf_counter()
    config.parse([GIN])
    configs = config.build_all()
    train, data, tok = configs["TrainConfig"], configs["DataConfig"], configs["TokenizerConfig"]
    schedule, adamw, model_cfg = configs["Schedule"], configs["AdamW"], configs["GPTConfig"]
    assert isinstance(train, TrainConfig) and isinstance(schedule, Schedule)
    schedule = schedule.for_run(train.steps)
    assert isinstance(adamw, AdamW) and isinstance(model_cfg, gpt.GPTConfig)
    directory = default_prepared_dir(data, tok)  # type: ignore[arg-type]
    train_tokens, val_tokens = open_split(directory, "train"), open_split(directory, "val")
    cfg = model_cfg.model_copy(update={"vocab_size": read_meta(directory)["vocab_size"]})
    block = data.window or model_cfg.block_size  # type: ignore[attr-defined]
    torch.manual_seed(0)
    model = load_craft_params(BaselineGPT(cfg), gpt.init(cfg, seed=0))
    matrices = [
        p for n, p in model.named_parameters() if p.ndim >= 2 and not n.startswith(("tok", "pos"))
    ]
    others = [
        p
        for n, p in model.named_parameters()
        if not (p.ndim >= 2 and not n.startswith(("tok", "pos")))
    ]
    groups = [
        {"params": matrices, "weight_decay": adamw.weight_decay},
        {"params": others, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        groups, lr=schedule.peak_lr, betas=(adamw.beta1, adamw.beta2), eps=adamw.eps
    )

    def lr_at(step: int) -> float:
        if step < schedule.warmup_steps:
            return schedule.peak_lr * (step + 1) / schedule.warmup_steps
        progress = min(
            1.0, (step - schedule.warmup_steps) / (schedule.total - schedule.warmup_steps)
        )
        return schedule.final_lr + 0.5 * (schedule.peak_lr - schedule.final_lr) * (
            1 + math.cos(math.pi * progress)
        )

    forward = torch.compile(model) if compile_model else model
    for step in range(train.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        batch = train_batch(
            train_tokens, window=block, batch_size=train.batch_size, seed=0, step=step
        )
        loss = forward(batch["inputs"], batch["targets"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.clip_norm or math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if train.eval_every and (step + 1) % train.eval_every == 0 and step + 1 < train.steps:
            val_loss(model, val_tokens, block)
    final = val_loss(model, val_tokens, block)
    impl = "conventional (torch.compile)" if compile_model else "conventional (eager)"
    return {
        "impl": impl,
        "seconds": round(time.perf_counter() - start, 1),
        "val_loss": round(final, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-craft", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(model)")
    parser.add_argument("--gin", action="append", default=[], help="a --gin.X=V override for Craft")
    parser.add_argument("--cold", action="store_true", help="Craft with an empty inductor cache")
    args = parser.parse_args()
    rows = [] if args.skip_craft else [craft_run([f"--gin.{o}" for o in args.gin], args.cold)]
    rows.append(conventional_run(compile_model=False))
    if args.compile:
        rows.append(conventional_run(compile_model=True))
    for row in rows:
        row.update(device=f"cpu ({torch.get_num_threads()} threads)", torch=torch.__version__)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
