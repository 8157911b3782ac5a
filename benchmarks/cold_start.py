"""Cold start: how long the first training step takes, and what the compiled step then gains.

For the GOT char GPT at 1M (4 layers, width 128) and 10M (6 layers, width 384), batch 12 x 64
(gin/bases/got.gin), AdamW, clipping at 1.0, CPU deterministic mode as a run has it:

- first step: a fresh process per case, with an empty inductor cache (a new
  TORCHINDUCTOR_CACHE_DIR; "cold") and then again on the cache that run filled ("warm"), for
  Craft's step compiled by regions (the default on a CPU), compiled whole (one graph for the
  forward, one for the update: the step before regional compilation), eager, and the
  conventional loop ("module": an nn.Module with the same math, `torch.compile(model)`,
  `torch.optim.AdamW`, as `benchmarks/train_step.py` has it). Inductor's
  precompiled header lives outside the cache dir (`/tmp/torchinductor_$USER/precompiled_
  headers`); the table says whether it was there, and `--fresh_header` removes it first.
- steady step time: one process runs the three steps on the same batches in alternating
  rounds (median), so machine noise hits them alike.

On a GPU (`--device cuda --shapes 10m,124m`): bf16, and GPT-2 small (124M, batch 12 x 1024).

Run: .venv/bin/python benchmarks/cold_start.py [--shapes 1m,10m] [--rounds 9] [--variants ...]
Prints JSON lines and a table.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

START = time.perf_counter()

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.train_step import baseline_runner  # noqa: E402
from craft.models import gpt  # noqa: E402
from craft.optim import AdamW, Schedule  # noqa: E402
from craft.train import init_state, make_train_step, to_device  # noqa: E402

# name: (layers, heads, width, vocab, batch, seq); the GOT char shapes, and GPT-2 small on a GPU.
SHAPES = {
    "1m": (4, 4, 128, 76, 12, 64),
    "10m": (6, 6, 384, 76, 12, 64),
    "124m": (12, 12, 768, 50304, 12, 1024),
}
VARIANTS = ("regions", "whole", "eager", "module")
HEADERS = Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}" / "precompiled_headers"
DEVICE = torch.device("cpu")


def model_config(shape: str) -> gpt.GPTConfig:
    layers, heads, width, vocab, _, seq = SHAPES[shape]
    return gpt.GPTConfig(
        vocab_size=vocab, block_size=seq, n_layer=layers, n_head=heads, n_embd=width
    )


def make_step(shape: str, variant: str) -> tuple[Any, Any]:
    """(step, state) for Craft's step; for "module", the conventional loop as a step."""
    cfg = model_config(shape)
    precision = "bf16" if DEVICE.type == "cuda" else "fp32"
    if variant == "module":
        run = baseline_runner(cfg, precision, DEVICE)
        return (lambda state, batch: (state, {"loss": run(batch)})), None
    optimizer = AdamW(beta2=0.99, weight_decay=0.1)
    state = to_device(init_state(gpt.init(cfg, seed=0), optimizer), DEVICE)
    step = make_train_step(
        functools.partial(gpt.loss, cfg=cfg), optimizer,
        Schedule(kind="warmup_cosine", peak_lr=3e-3, final_lr=1e-4, warmup_steps=100,
                 total_steps=2000),
        precision=precision, clip_norm=1.0, compile=variant != "eager",
        compile_scope="whole" if variant == "whole" else "regions",
        deterministic=DEVICE.type == "cpu",
    )  # fmt: skip
    return step, state


def batches(shape: str, count: int) -> list[dict[str, torch.Tensor]]:
    _, _, _, vocab, batch, seq = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        x = torch.randint(0, vocab, (batch, seq + 1), generator=g).to(DEVICE)
        out.append({"inputs": x[:, :-1], "targets": x[:, 1:]})
    return out


def sync(value: torch.Tensor) -> None:
    float(value)  # waits for the device


def first_step_worker(shape: str, variant: str) -> dict[str, Any]:
    step, state = make_step(shape, variant)
    data = batches(shape, 2)
    built = time.perf_counter()
    state, metrics = step(state, data[0])
    sync(metrics["loss"])
    first = time.perf_counter()
    state, metrics = step(state, data[1])
    sync(metrics["loss"])
    return {
        "shape": shape, "variant": variant, "first_step_s": round(first - built, 2),
        "second_step_ms": round(1000 * (time.perf_counter() - first), 1),
        "process_to_first_step_s": round(first - START, 2),
    }  # fmt: skip


def steady_worker(shape: str, variants: list[str], rounds: int, steps: int) -> dict[str, Any]:
    runners = {variant: make_step(shape, variant) for variant in variants}
    states = {variant: runner[1] for variant, runner in runners.items()}
    data = batches(shape, steps)
    times: dict[str, list[float]] = {variant: [] for variant in variants}
    for round_index in range(rounds + 1):  # round 0 compiles and warms up
        for variant in variants:
            step = runners[variant][0]
            began = time.perf_counter()
            for batch in data:
                states[variant], metrics = step(states[variant], batch)
            sync(metrics["loss"])
            if round_index:
                times[variant].append(1000 * (time.perf_counter() - began) / steps)
    medians = {variant: round(statistics.median(values), 2) for variant, values in times.items()}
    return {"shape": shape, "steady_ms": medians}


def spawn(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, env=env, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"worker {args} failed with exit code {result.returncode}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1m,10m")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--fresh_header",
        action="store_true",
        help="remove inductor's precompiled headers first (a first-ever run)",
    )
    parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)
    if args.worker:
        kind, shape, *rest = args.worker
        row = (
            first_step_worker(shape, rest[0]) if kind == "first"
            else steady_worker(shape, args.variants.split(","), args.rounds, args.steps)
        )  # fmt: skip
        print(json.dumps(row), flush=True)
        return

    options = ["--threads", str(args.threads), "--device", args.device, "--variants", args.variants]
    table = []
    for shape in args.shapes.split(","):
        firsts = {}
        for variant in args.variants.split(","):
            with tempfile.TemporaryDirectory(prefix="craft-inductor-") as cache:
                if args.fresh_header:
                    shutil.rmtree(HEADERS, ignore_errors=True)
                header = HEADERS.is_dir() and any(HEADERS.iterdir())
                env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
                common = [*options, "--worker", "first", shape, variant]
                cold = spawn(common, env)
                warm = spawn(common, env)
            print(json.dumps({**cold, "cache": "cold", "header_present": header}), flush=True)
            print(json.dumps({**warm, "cache": "warm"}), flush=True)
            firsts[variant] = (cold, warm, header)
        steady = spawn(
            [*options, "--rounds", str(args.rounds), "--steps", str(args.steps), "--worker",
             "steady", shape],
            dict(os.environ),
        )  # fmt: skip
        print(json.dumps(steady), flush=True)
        for variant, (cold, warm, header) in firsts.items():
            table.append((shape, variant, cold, warm, header, steady["steady_ms"][variant]))
    print("\n| shape | step | first step, cold cache (s) | warm cache (s) | steady ms/step |")
    print("|---|---|---:|---:|---:|")
    for shape, variant, cold, warm, header, steady_ms in table:
        note = "" if header else " (header built)"
        print(
            f"| {shape} | {variant} | {cold['first_step_s']}{note} | {warm['first_step_s']} "
            f"| {steady_ms} |"
        )


if __name__ == "__main__":
    main()
