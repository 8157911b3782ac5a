"""Run under torchrun by tests/test_distributed.py: a few data-parallel steps of a tiny GPT.

Usage: torchrun --standalone --nproc_per_node=N tests/dist_worker.py OUT_DIR STEPS [options]
Each rank writes its final params to OUT_DIR/rank<R>.safetensors. Options: --shard (ZeRO-1
optimizer state), --adamw (else SGD with momentum), --dropout=P, --dying=R (rank R exits
abruptly before its second step, as a crashed process would), --hanging=R (rank R stops
answering before its second step, as a deadlocked process would).
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from craft import distributed, tree
from craft.models import gpt
from craft.optim import SGD, AdamW, Schedule
from craft.train import init_state, make_train_step
from craft.train.sharded import OptimizerShards

CFG = gpt.GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32)
GLOBAL_BATCH = 8


def global_batch(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    x = torch.randint(0, CFG.vocab(), (GLOBAL_BATCH, 17), generator=g)
    return {"inputs": x[:, :-1].clone(), "targets": x[:, 1:].clone()}


def train(
    world: distributed.World,
    steps: int,
    *,
    shard: bool = False,
    adamw: bool = False,
    dropout: float = 0.0,
    dying: int = -1,
    hanging: int = -1,
) -> dict[str, torch.Tensor]:
    cfg = CFG.model_copy(update={"dropout": dropout})
    # eps 1e-5: the attention key bias has a zero true gradient, and Adam with a tiny eps turns
    # its rounding noise (which differs with the order of any sum) into full-size steps.
    optimizer = AdamW(eps=1e-5) if adamw else SGD(momentum=0.9)
    state = init_state(gpt.init(cfg, seed=0), optimizer, seed=0)
    shards = OptimizerShards(state.params, world.rank, world.size) if shard else None
    if shards is not None:
        state = shards.shard_state(state)
    step = make_train_step(
        functools.partial(gpt.loss, cfg=cfg), optimizer,
        Schedule(kind="constant", peak_lr=1e-2 if adamw else 0.1),
        compile=False, accum_steps=2, clip_norm=1.0, shards=shards, rank=world.rank,
        grad_sync=distributed.all_reduce_sum if world.size > 1 and not shard else None,
    )  # fmt: skip
    for i in range(steps):
        if i == 1 and world.rank == dying:
            os._exit(17)
        if i == 1 and world.rank == hanging:
            time.sleep(3600)
        state, _ = step(state, distributed.shard(global_batch(i), world))
    return {name: p.detach().contiguous() for name, p in tree.to_dotted(state.params).items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("steps", type=int)
    parser.add_argument("--shard", action="store_true")
    parser.add_argument("--adamw", action="store_true")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--dying", type=int, default=-1)
    parser.add_argument("--hanging", type=int, default=-1)
    args = parser.parse_args()
    world = distributed.world_from_env()
    # A short group timeout only where a rank is meant to fail: elsewhere a loaded machine's
    # slow step must not trip it.
    failing = args.dying >= 0 or args.hanging >= 0
    distributed.init(world, timeout_s=20 if failing else 300)
    torch.set_num_threads(1)
    try:
        params = train(
            world, args.steps, shard=args.shard, adamw=args.adamw, dropout=args.dropout,
            dying=args.dying, hanging=args.hanging,
        )  # fmt: skip
        save_file(params, str(args.out / f"rank{world.rank}.safetensors"))
        distributed.shutdown()  # without it gloo sometimes aborts the process at exit
    finally:
        distributed.shutdown(wait=False)  # after a failure: the others may be gone


if __name__ == "__main__":
    main()
