"""Data-parallel scaling: tokens/s of 1 process against N processes under torchrun (gloo on CPU,
NCCL on GPUs), same global batch, Craft's step with its all-reduce, and with the optimizer state
sharded (ZeRO-1: reduce-scatter, slice update, all-gather); the optimizer memory each rank holds.

Run: .venv/bin/python benchmarks/distributed.py [--procs=2] [--steps=30]
Prints one JSON line per run and a table: tokens/s against 1 process, optimizer MB per rank.
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

from craft import distributed, tree  # noqa: E402
from craft.models import gpt  # noqa: E402
from craft.optim import AdamW, Schedule  # noqa: E402
from craft.train import init_state, make_train_step, to_device  # noqa: E402
from craft.train.sharded import OptimizerShards  # noqa: E402

CFG = gpt.GPTConfig(vocab_size=76, block_size=128, n_layer=4, n_head=4, n_embd=128)
GLOBAL_BATCH = 32


def worker(steps: int, shard: bool) -> None:
    world = distributed.world_from_env()
    distributed.init(world, timeout_s=120)
    cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // world.size))
    device = (
        torch.device("cuda", world.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    )
    optimizer = AdamW()
    state = init_state(gpt.init(CFG, seed=0), optimizer)
    shards = OptimizerShards(state.params, world.rank, world.size) if shard else None
    if shards is not None:
        state = shards.shard_state(state)
    state = to_device(state, device)
    sync = distributed.all_reduce_sum if world.size > 1 and shards is None else None
    step = make_train_step(
        functools.partial(gpt.loss, cfg=CFG), optimizer, Schedule(kind="constant", peak_lr=1e-3),
        clip_norm=1.0, compile=True, grad_sync=sync, shards=shards, rank=world.rank,
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
    # What each rank holds of the optimizer state: the bytes of its tensors, as allocated.
    held = sum(t.numel() * t.element_size() for t in tree.leaves(state.opt_state))
    per_rank = [held] * world.size
    if world.size > 1:
        torch.distributed.all_gather_object(per_rank, held)
    if world.main:
        print(json.dumps({"procs": world.size, "sharded": shard,
                          "ms_per_step": round(seconds * 1e3, 1),
                          "tokens_per_s": round(GLOBAL_BATCH * CFG.block_size / seconds),
                          "optimizer_mb_per_rank": [round(b / 2**20, 3) for b in per_rank],
                          "params": gpt.param_count(CFG),
                          "threads_per_proc": torch.get_num_threads(), "device": device.type,
                          "torch": torch.__version__}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--shard", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.steps, args.shard)
        return
    rows = []
    for procs, shard in ((1, False), (args.procs, False), (args.procs, True)):
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
        command = [sys.executable, *launcher, __file__, "--worker", "--steps", str(args.steps)]
        result = subprocess.run(
            command + (["--shard"] if shard else []), capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise SystemExit(result.stderr[-3000:])
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'procs':>5} {'optimizer':>10} {'ms/step':>8} {'tokens/s':>9} {'vs 1 proc':>9}  "
          "optimizer MB per rank")  # fmt: skip
    for row in rows:
        print(f"{row['procs']:>5} {'sharded' if row['sharded'] else 'replicated':>10} "
              f"{row['ms_per_step']:>8} {row['tokens_per_s']:>9} "
              f"{row['tokens_per_s'] / rows[0]['tokens_per_s']:>8.2f}x  "
              f"{row['optimizer_mb_per_rank']}")  # fmt: skip


if __name__ == "__main__":
    main()
