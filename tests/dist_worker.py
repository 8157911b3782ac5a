"""Run under torchrun by tests/test_distributed.py: a few data-parallel steps of a tiny GPT.

Usage: torchrun --standalone --nproc_per_node=N tests/dist_worker.py OUT_DIR STEPS [DYING_RANK]
Each rank writes its final params to OUT_DIR/rank<R>.safetensors. With DYING_RANK, that rank
exits abruptly before its second step, as a crashed or killed process would.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from craft import distributed, tree
from craft.models import gpt
from craft.optim import SGD, Schedule
from craft.train import init_state, make_train_step

CFG = gpt.GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32)
GLOBAL_BATCH = 8


def global_batch(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    x = torch.randint(0, CFG.vocab(), (GLOBAL_BATCH, 17), generator=g)
    return {"inputs": x[:, :-1].clone(), "targets": x[:, 1:].clone()}


def train(world: distributed.World, steps: int, dying_rank: int = -1) -> dict[str, torch.Tensor]:
    optimizer = SGD(momentum=0.9)
    state = init_state(gpt.init(CFG, seed=0), optimizer, seed=0)
    step = make_train_step(
        functools.partial(gpt.loss, cfg=CFG), optimizer, Schedule(kind="constant", peak_lr=0.1),
        compile=False, accum_steps=2, clip_norm=1.0,
        grad_sync=distributed.all_reduce_sum if world.size > 1 else None,
    )  # fmt: skip
    for i in range(steps):
        if i == 1 and world.rank == dying_rank:
            os._exit(17)
        state, _ = step(state, distributed.shard(global_batch(i), world))
    return {name: p.detach().contiguous() for name, p in tree.to_dotted(state.params).items()}


def main() -> None:
    out, steps = Path(sys.argv[1]), int(sys.argv[2])
    dying_rank = int(sys.argv[3]) if len(sys.argv) > 3 else -1
    world = distributed.world_from_env()
    distributed.init(world, timeout_s=20)
    torch.set_num_threads(1)
    save_file(train(world, steps, dying_rank), str(out / f"rank{world.rank}.safetensors"))


if __name__ == "__main__":
    main()
