"""Data-parallel scaling: tokens/s of 1 process against N processes under torchrun (gloo on CPU,
NCCL on GPUs), same global batch, Craft's step with its all-reduce.

Run: .venv/bin/python benchmarks/distributed.py [--procs=2] [--steps=30]
Prints one JSON line per process count and the scaling efficiency (tokens/s over N x 1-process).
On the 2-core CPU machine, 1 process uses 2 threads and 2 processes 1 thread each.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from craft import distributed  # noqa: E402
from craft.models import gpt  # noqa: E402
from craft.optim import AdamW, Schedule  # noqa: E402
from craft.train import init_state, make_train_step, to_device  # noqa: E402

CFG = gpt.GPTConfig(vocab_size=76, block_size=128, n_layer=4, n_head=4, n_embd=128)
GLOBAL_BATCH = 32


def worker(steps: int) -> None:
    world = distributed.world_from_env()
    distributed.init(world, timeout_s=120)
    cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // world.size))
    device = (
        torch.device("cuda", world.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    )
    optimizer = AdamW()
    state = to_device(init_state(gpt.init(CFG, seed=0), optimizer), device)
    sync = distributed.all_reduce_sum if world.size > 1 else None
    step = make_train_step(
        functools.partial(gpt.loss, cfg=CFG), optimizer, Schedule(kind="constant", peak_lr=1e-3),
        clip_norm=1.0, compile=True, grad_sync=sync,
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 76, (GLOBAL_BATCH, CFG.block_size + 1), generator=g)
    batch = distributed.shard({"inputs": x[:, :-1], "targets": x[:, 1:]}, world)
    batch = {k: v.to(device) for k, v in batch.items()}
    for _ in range(3):  # compile and warm up
        state, metrics = step(state, batch)
    float(metrics["loss"])
    distributed.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    float(metrics["loss"])
    seconds = (time.perf_counter() - start) / steps
    if world.main:
        print(json.dumps({"procs": world.size, "ms_per_step": round(seconds * 1e3, 1),
                          "tokens_per_s": round(GLOBAL_BATCH * CFG.block_size / seconds),
                          "threads_per_proc": torch.get_num_threads(), "device": device.type,
                          "torch": torch.__version__}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.steps)
        return
    rows = []
    for procs in (1, args.procs):
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
        command = [sys.executable, *launcher, __file__, "--worker", "--steps", str(args.steps)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(result.stderr[-3000:])
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    efficiency = rows[1]["tokens_per_s"] / (rows[0]["tokens_per_s"] * 1.0)
    print(f"{args.procs} processes: {efficiency:.2f}x the throughput of 1 process")


if __name__ == "__main__":
    main()
