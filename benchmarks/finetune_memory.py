"""What fine-tuning costs: trainable params, optimizer state and one step's peak memory, full
fine-tuning against LoRA (and a conventional baseline for the measured step).

Run: .venv/bin/python benchmarks/finetune_memory.py [--rank=8] [--block=64] [--batch=12]
     [--steps=3] [--only=count|measure]

Counting: the 10M ChatGOT shape (6 layers, 6 heads, width 384, char vocabulary of 65, block
64 as gin/got_char.gin) and GPT-2 124M (12 layers, 12 heads, width 768, vocab 50,257, block
1024), built on the meta device (nothing allocated): params, trainable params, gradient and
AdamW-state bytes (fp32 mu and nu per trainable param), checkpoint bytes (params + state).

Measuring: one eager training step of the 10M shape on the CPU, full and LoRA, each in its own
interpreter. It builds the state, runs one step (warm-up), resets the peak RSS
(`/proc/self/clear_refs`), runs `--steps` more and reports the peak RSS above the RSS before
them: the step's own memory (activations, gradients, merged LoRA weights), beside the state's.
The conventional baseline is an `nn.Module` GPT (benchmarks/baseline_gpt.py) with
`torch.optim.AdamW`; for LoRA its projections get PEFT-style two-path adapters
(`x W^T + s (x A^T) B^T`, the base frozen, the optimizer over A and B only). Prints one JSON
line per row and a table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from craft import tree  # noqa: E402
from craft.models import gpt  # noqa: E402
from craft.optim import AdamW, Schedule  # noqa: E402
from craft.train import init_state, lora, make_train_step  # noqa: E402
from craft.train.lora import LoRAConfig  # noqa: E402

SHAPES = {
    "10M char": gpt.GPTConfig(vocab_size=65, block_size=64, n_layer=6, n_head=6, n_embd=384),
    "GPT-2 124M": gpt.GPTConfig(
        vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768
    ),
}
MB = 1e6
# Blocks of 64 KiB and more are mmapped and go back to the OS when freed, so the RSS follows the
# live tensors (glibc's default threshold grows to 32 MiB and keeps freed blocks in the heap).
CHILD_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def count(cfg: gpt.GPTConfig, rank: int) -> list[dict[str, Any]]:
    """Full and LoRA figures for one shape, on the meta device."""
    with torch.device("meta"):
        base = gpt.init(cfg, seed=0)
        adapters = lora.shapes(base, LoRAConfig(rank=rank))
        rows = []
        for mode, params, trainable in [
            ("full", base, base),
            (f"LoRA r={rank}", lora.attach(base, adapters), adapters),
        ]:
            state = AdamW().init(trainable)
            # A LoRA step runs the model on W + s B A: one more copy of each adapted weight,
            # kept for the backward (a two-path layer would not need it).
            merged = (
                0
                if trainable is base
                else sum(b.shape[0] * a.shape[1] for a, b in _pairs(adapters))
            )
            opt_bytes = sum(t.numel() * t.element_size() for t in tree.leaves(state))
            total, trained = tree.count(params), tree.count(trainable)
            rows.append(
                {
                    "mode": mode,
                    "params": total,
                    "trainable": trained,
                    "trainable_pct": round(100 * trained / total, 3),
                    "grad_MB": round(4 * trained / MB, 2),
                    "adamw_state_MB": round(opt_bytes / MB, 2),
                    "checkpoint_MB": round((4 * total + opt_bytes) / MB, 2),
                    "merged_weights_MB": round(4 * merged / MB, 2),
                }
            )
    return rows


def _pairs(adapters: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    flat = tree.to_dotted(adapters)
    return [(flat[name], flat[name[:-1] + "b"]) for name in flat if name.endswith(".a")]


def rss_mb(field: str) -> float:
    status = Path("/proc/self/status").read_text()
    match = re.search(rf"{field}:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1)) * 1024 / MB


def batch(cfg: gpt.GPTConfig, size: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, cfg.vocab(), (size, cfg.block_size + 1), generator=g)
    return {"inputs": x[:, :-1].clone(), "targets": x[:, 1:].clone()}


def craft_step(cfg: gpt.GPTConfig, rank: int) -> tuple[Any, Any]:
    base = gpt.init(cfg, seed=0)
    optimizer = AdamW()
    schedule = Schedule(kind="constant", peak_lr=1e-4)
    if rank == 0:
        state = init_state(base, optimizer)
        loss = functools.partial(gpt.loss, cfg=cfg)
        return state, make_train_step(loss, optimizer, schedule, clip_norm=1.0, compile=False)
    lora_cfg = LoRAConfig(rank=rank)
    params = lora.attach(base, lora.init(base, lora_cfg, seed=0))
    names = lora.trainable(params, None)
    state = init_state(params, optimizer, trainable=names)

    def loss_fn(p: Any, b: Any, *, rng: Any) -> Any:
        return gpt.loss(lora.model_params(p, lora_cfg), b, cfg, rng=rng)

    step = make_train_step(
        loss_fn, optimizer, schedule, clip_norm=1.0, compile=False, trainable=names
    )
    return state, step


class TwoPathLoRA(torch.nn.Module):
    """A frozen nn.Linear plus `s * B(A(x))`, as PEFT's LoRA layer computes it."""

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        base.requires_grad_(False)
        self.a = torch.nn.Parameter(torch.empty(rank, base.in_features))
        self.b = torch.nn.Parameter(torch.zeros(base.out_features, rank))
        torch.nn.init.kaiming_uniform_(self.a, a=5**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * torch.nn.functional.linear(
            torch.nn.functional.linear(x, self.a), self.b
        )


def conventional_step(cfg: gpt.GPTConfig, rank: int) -> tuple[Any, Any]:
    from benchmarks.baseline_gpt import BaselineGPT

    model = BaselineGPT(cfg)
    if rank:
        model.requires_grad_(False)
        for block in model.blocks:
            for name in ("qkv", "attn_proj", "fc", "mlp_proj"):
                setattr(block, name, TwoPathLoRA(getattr(block, name), rank, 16.0))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)

    def step(_: Any, b: dict[str, torch.Tensor]) -> tuple[Any, dict[str, torch.Tensor]]:
        loss = model(b["inputs"], b["targets"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return None, {"loss": loss.detach()}

    # AdamW makes its state on the first step: one step below builds it before the reset.
    return (model, optimizer), step


def child(impl: str, rank: int, block: int, size: int, steps: int) -> dict[str, Any]:
    cfg = SHAPES["10M char"].model_copy(update={"block_size": block})
    torch.manual_seed(0)
    before_state = rss_mb("VmRSS")
    state, step = (craft_step if impl == "craft" else conventional_step)(cfg, rank)
    state, _ = step(state, batch(cfg, size, 0))  # warm-up; the baseline's AdamW state is made
    state_mb = rss_mb("VmRSS") - before_state
    Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts again from here
    start = rss_mb("VmRSS")
    tick = time.perf_counter()
    for i in range(steps):
        state, metrics = step(state, batch(cfg, size, i + 1))
        float(metrics["loss"])
    seconds = (time.perf_counter() - tick) / steps
    return {
        "impl": impl,
        "mode": f"LoRA r={rank}" if rank else "full",
        "block": block,
        "batch": size,
        "state_and_warmup_MB": round(state_mb, 1),
        "step_peak_MB": round(rss_mb("VmHWM") - start, 1),
        "peak_rss_MB": round(rss_mb("VmHWM"), 1),
        "s_per_step": round(seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--only", choices=["count", "measure"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, rank = args.child.split(":")
        print(json.dumps(child(impl, int(rank), args.block, args.batch, args.steps)))
        return
    print(json.dumps({"torch": torch.__version__, "machine": platform.machine(),
                      "threads": torch.get_num_threads()}))  # fmt: skip
    counted, measured = [], []
    if args.only != "measure":
        for shape, cfg in SHAPES.items():
            for row in count(cfg, args.rank):
                counted.append({"shape": shape, **row})
                print(json.dumps(counted[-1]), flush=True)
    if args.only != "count":
        for impl in ("craft", "conventional"):
            for rank in (0, args.rank):
                out = subprocess.run(
                    [sys.executable, __file__, f"--child={impl}:{rank}", f"--block={args.block}",
                     f"--batch={args.batch}", f"--steps={args.steps}"],
                    capture_output=True, text=True, check=True, cwd=REPO, env=CHILD_ENV,
                ).stdout  # fmt: skip
                measured.append(json.loads(out.strip().splitlines()[-1]))
                print(json.dumps(measured[-1]), flush=True)
    if counted:
        print("\n| shape | mode | params | trainable | % | grads MB | AdamW state MB | ckpt MB "
              "| merged weights MB |")  # fmt: skip
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for row in counted:
            print(f"| {row['shape']} | {row['mode']} | {row['params']:,} | {row['trainable']:,} | "
                  f"{row['trainable_pct']} | {row['grad_MB']} | {row['adamw_state_MB']} | "
                  f"{row['checkpoint_MB']} | {row['merged_weights_MB']} |")  # fmt: skip
    if measured:
        print(f"\n10M char, block {args.block}, batch {args.batch}, eager step on the CPU")
        print("| impl | mode | state + warm-up MB | step peak MB | peak RSS MB |")
        print("|---|---|---:|---:|---:|")
        for row in measured:
            print(f"| {row['impl']} | {row['mode']} | {row['state_and_warmup_MB']} | "
                  f"{row['step_peak_MB']} | {row['peak_rss_MB']} |")  # fmt: skip


if __name__ == "__main__":
    main()
