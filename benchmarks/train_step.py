"""Train-step throughput: Craft's compiled step against a conventional PyTorch loop.

Baseline: `BaselineGPT` (an nn.Module with the same math), `torch.compile(model)`,
`torch.optim.AdamW` (fused on CUDA), `loss.backward()`, `clip_grad_norm_`. Both sides clip at
1.0 and see the same random tokens. Throughput: both in one process, timed in alternating rounds
(median), so machine noise hits both alike. Peak memory: each implementation (and Craft with
activation checkpointing) in a process of its own, over three steady-state steps.

Run: .venv/bin/python benchmarks/train_step.py [--device=cpu|cuda] [--only=NAME]
Prints JSON lines and a table: ms/step, tokens/s, peak memory, MFU (where the device's peak is
known) and the Craft/baseline throughput ratio.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.baseline_gpt import BaselineGPT, load_craft_params  # noqa: E402
from benchmarks.workers import run_worker  # noqa: E402
from craft import tree  # noqa: E402
from craft.devices import peak_flops  # noqa: E402
from craft.models import gpt  # noqa: E402
from craft.optim import AdamW, Schedule, decay_mask  # noqa: E402
from craft.train import init_state, make_train_step, to_device  # noqa: E402
from craft.train.peak_memory import live_heap_bytes  # noqa: E402

_FIELDS = ("layers", "heads", "width", "vocab", "batch", "seq", "precision", "device")
CONFIGS: dict[str, dict[str, Any]] = {
    name: dict(zip(_FIELDS, values, strict=True))
    for name, values in {
        "cpu-1m-char": (4, 4, 128, 76, 32, 128, "fp32", "cpu"),
        "gpu-10m-char": (6, 6, 384, 76, 64, 256, "bf16", "cuda"),
        "gpu-124m-b12": (12, 12, 768, 50304, 12, 1024, "bf16", "cuda"),
        "gpu-124m-b32": (12, 12, 768, 50304, 32, 1024, "bf16", "cuda"),
    }.items()
}


def model_config(spec: dict[str, Any], remat: bool) -> gpt.GPTConfig:
    return gpt.GPTConfig(
        vocab_size=spec["vocab"], block_size=spec["seq"], n_layer=spec["layers"],
        n_head=spec["heads"], n_embd=spec["width"], remat=remat,
    )  # fmt: skip


def flops_per_token(cfg: gpt.GPTConfig, seq: int) -> float:
    """6N + 12·L·H·Q·T (PaLM, appendix B), N without the position table."""
    n = gpt.param_count(cfg) - (cfg.block_size * cfg.n_embd if cfg.positions == "learned" else 0)
    return 6 * n + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq


def craft_runner(
    cfg: gpt.GPTConfig, precision: str, device: torch.device, compile_mode: str = "default"
):
    optimizer = AdamW(weight_decay=0.1)
    state = to_device(init_state(gpt.init(cfg, seed=0), optimizer), device)
    step = make_train_step(
        functools.partial(gpt.loss, cfg=cfg), optimizer, Schedule(kind="constant", peak_lr=3e-4),
        precision=precision, clip_norm=1.0, compile=True,  # type: ignore[arg-type]
        compile_mode=compile_mode,  # type: ignore[arg-type]
    )  # fmt: skip

    def run(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        nonlocal state
        state, metrics = step(state, batch)
        return metrics["loss"]

    return run


def baseline_runner(cfg: gpt.GPTConfig, precision: str, device: torch.device):
    params = gpt.init(cfg, seed=0)
    model = load_craft_params(BaselineGPT(cfg), params).to(device)
    names = list(tree.to_dotted(params))
    decays = dict(zip(names, decay_mask(params, AdamW()), strict=True))
    # Same decay rule as Craft's AdamW: matrices only, embeddings excluded.
    decayed = [
        p for n, p in model.named_parameters() if p.ndim >= 2 and "tok" not in n and "pos" not in n
    ]
    others = [
        p
        for n, p in model.named_parameters()
        if not (p.ndim >= 2 and "tok" not in n and "pos" not in n)
    ]
    assert len(decayed) == sum(decays.values())
    optimizer = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}],
        lr=3e-4, betas=(0.9, 0.95), fused=device.type == "cuda",
    )  # fmt: skip
    compiled = torch.compile(model)
    autocast = precision == "bf16"

    def run(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast(device.type, torch.bfloat16, enabled=autocast):
            loss = compiled(batch["inputs"], batch["targets"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return run


def make_batches(spec: dict[str, Any], device: torch.device) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        x = torch.randint(0, spec["vocab"], (spec["batch"], spec["seq"] + 1), generator=g)
        batches.append({"inputs": x[:, :-1].to(device), "targets": x[:, 1:].to(device)})
    return batches


class PeakHeap:
    """The peak of live heap bytes above the level at entry, sampled every 0.5 ms (CPU)."""

    def __enter__(self) -> PeakHeap:
        gc.collect()
        self.start = live_heap_bytes()
        self.peak, self._stop = self.start, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, live_heap_bytes())
            time.sleep(0.0005)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def throughput_worker(
    name: str, steps: int, warmup: int, rounds: int, graphs: bool = True
) -> list[dict[str, Any]]:
    """Both implementations in one process, alternating rounds: noise hits both alike."""
    spec = CONFIGS[name]
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    cfg = model_config(spec, remat=False)
    makers = {
        "baseline": lambda: baseline_runner(cfg, spec["precision"], device),
        "craft": lambda: craft_runner(cfg, spec["precision"], device),
    }
    if cuda and graphs:  # the same step replayed as CUDA graphs
        makers["craft-graphs"] = lambda: craft_runner(
            cfg, spec["precision"], device, "reduce-overhead"
        )
    runners, resident = {}, {}
    for impl, make in makers.items():
        before = torch.cuda.memory_allocated(device) if cuda else 0
        runners[impl] = make()
        resident[impl] = (torch.cuda.memory_allocated(device) - before) if cuda else 0
    batches = make_batches(spec, device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    warmup_s, times, peak_mb = {}, {impl: [] for impl in runners}, {}
    for impl, run in runners.items():
        start = time.perf_counter()
        for i in range(warmup):
            run(batches[i % 4])
        sync()
        warmup_s[impl] = time.perf_counter() - start
        print(
            f"{name} {impl}: warm-up (compile) {warmup_s[impl]:.1f} s", file=sys.stderr, flush=True
        )
    for round_index in range(rounds):
        for impl, run in runners.items():
            if cuda and round_index == 0:
                # CUDA memory in the same process: this implementation's resident state (params
                # and optimizer state, measured when it was built) plus what its steps add.
                resting = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            for i in range(steps):
                run(batches[i % 4])
            sync()
            times[impl].append((time.perf_counter() - start) / steps)
            if cuda and round_index == 0:
                added = torch.cuda.max_memory_allocated(device) - resting
                peak_mb[impl] = round((resident[impl] + added) / 2**20, 1)
    tokens = spec["batch"] * spec["seq"]
    peak = peak_flops(device)
    rows = []
    for impl in runners:
        seconds = statistics.median(times[impl])
        achieved = flops_per_token(cfg, spec["seq"]) * tokens / seconds
        rows.append(
            {
                "suite": "train_step",
                "config": name,
                "impl": impl,
                "ms_per_step": round(seconds * 1e3, 2),
                "tokens_per_s": round(tokens / seconds),
                "mfu": round(achieved / peak, 4) if peak else None,
                "params": gpt.param_count(cfg),
                "warmup_s": round(warmup_s[impl], 1),
                "peak_memory_mb": peak_mb.get(impl),
                "device": device_name(device),
                "torch": torch.__version__,
            }
        )
    for row in rows[1:]:
        row["vs_baseline"] = round(rows[0]["ms_per_step"] / row["ms_per_step"], 3)
    return rows


def memory_worker(name: str, impl: str, remat: bool, warmup: int) -> dict[str, Any]:
    """One implementation per process: peak memory over three steady-state steps. CUDA: what
    the caching allocator peaked at. CPU: the peak live heap above the resting level, plus the
    params, gradients and two AdamW moments (4 copies of the params, fp32)."""
    spec = CONFIGS[name]
    device = torch.device(spec["device"])
    run = (craft_runner if impl == "craft" else baseline_runner)(
        model_config(spec, remat), spec["precision"], device
    )
    batches = make_batches(spec, device)
    for i in range(warmup):
        run(batches[i % 4])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        for i in range(3):
            run(batches[i % 4])
        torch.cuda.synchronize()
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        # Params, gradients and optimizer state are the same on both sides; what a step adds on
        # top of them (activations, gradients, temporaries) is what differs.
        state_mb = 4 * 4 * gpt.param_count(model_config(spec, remat)) / 2**20
        with PeakHeap() as heap:
            for i in range(3):
                run(batches[i % 4])
        peak_mb = (heap.peak - heap.start) / 2**20 + state_mb
    return {
        "suite": "train_step_memory",
        "config": name,
        "impl": impl,
        "remat": remat,
        "peak_memory_mb": round(peak_mb, 1),
        "device": device_name(device),
        "torch": torch.__version__,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def spawn(args: argparse.Namespace, job: list[Any]) -> Any:
    options = {name: getattr(args, name) for name in ("steps", "warmup", "rounds", "threads")}
    flags = [f"--{name}={value}" for name, value in options.items()]
    return run_worker(__file__, job, [*flags, "--graphs" if args.graphs else "--no-graphs"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--only", default=None, help="run one config by name")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=6, help="alternating timed rounds")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument(
        "--remat-memory", action=argparse.BooleanOptionalAction, default=True,
        help="also measure Craft's peak memory with activation checkpointing (a process each)",
    )  # fmt: skip
    parser.add_argument(
        "--graphs", action=argparse.BooleanOptionalAction, default=True,
        help="on CUDA, also time Craft's step replayed as CUDA graphs (reduce-overhead)",
    )  # fmt: skip
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        job = json.loads(args.worker)
        if job[0] == "throughput":
            rows = throughput_worker(job[1], args.steps, args.warmup, args.rounds, args.graphs)
            print(json.dumps(rows))
        else:
            print(json.dumps(memory_worker(job[1], job[2], job[3], args.warmup)))
        return

    names = (
        [args.only] if args.only else [n for n, s in CONFIGS.items() if s["device"] == args.device]
    )
    table = []
    for name in names:
        rows = spawn(args, ["throughput", name]) or []
        for row in rows:
            print(json.dumps(row), flush=True)
        memory = {(row["impl"], False): row["peak_memory_mb"] for row in rows}
        # CUDA peaks come from the throughput run; the CPU needs one process per measurement.
        jobs = [] if args.device == "cuda" else [("baseline", False), ("craft", False)]
        for impl, remat in [*jobs, *([("craft", True)] if args.remat_memory else [])]:
            found = spawn(args, ["memory", name, impl, remat])
            if found:
                print(json.dumps(found), flush=True)
                memory[(impl, remat)] = found["peak_memory_mb"]
        for row in rows:
            table.append((row, memory.get((row["impl"], False)), memory.get((row["impl"], True))))
    print_table(table)


def print_table(table: list[tuple[dict[str, Any], float | None, float | None]]) -> None:
    columns = ("config", "impl", "ms/step", "tok/s", "MFU", "vs base", "peak MB", "+remat MB")
    widths = (14, 12, 9, 9, 6, 8, 9, 10)
    print("\n" + " ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
    for row, mem, remat_mem in table:
        cells = (
            row["config"],
            row["impl"],
            row["ms_per_step"],
            row["tokens_per_s"],
            f"{row['mfu']:.1%}" if row["mfu"] is not None else "-",
            f"{row['vs_baseline']:.3f}" if row.get("vs_baseline") else "-",
            mem or "-",
            remat_mem or "-",
        )
        print(" ".join(f"{c!s:>{w}}" for c, w in zip(cells, widths, strict=True)))


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    main()
