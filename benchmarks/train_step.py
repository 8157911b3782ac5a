"""Train-step throughput: Craft's compiled step against a conventional PyTorch loop.

Baseline: `BaselineGPT` (an nn.Module with the same math), `torch.compile(model)`,
`torch.optim.AdamW` (fused on CUDA), `loss.backward()`, `clip_grad_norm_`. Both sides clip at
1.0 and see the same random tokens. Each (config, implementation) runs in its own process so that
compile caches and peak memory do not leak between them.

Run: .venv/bin/python benchmarks/train_step.py [--device=cpu|cuda] [--steps=20] [--only=NAME]
Prints JSON lines and a table: ms/step, tokens/s, peak memory, MFU (where the device's peak is
known) and the Craft/baseline throughput ratio.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.baseline_gpt import BaselineGPT, load_craft_params  # noqa: E402
from craft import tree  # noqa: E402
from craft.models import gpt  # noqa: E402
from craft.optim import AdamW, Schedule, decay_mask  # noqa: E402
from craft.train import init_state, make_train_step, to_device  # noqa: E402

CONFIGS: dict[str, dict[str, Any]] = {
    # name: model shape, batch, sequence length, precision, device kind
    "cpu-1m-char": dict(layers=4, heads=4, width=128, vocab=76, batch=32, seq=128, precision="fp32", device="cpu"),
    "gpu-10m-char": dict(layers=6, heads=6, width=384, vocab=76, batch=64, seq=256, precision="bf16", device="cuda"),
    "gpu-124m-b12": dict(layers=12, heads=12, width=768, vocab=50304, batch=12, seq=1024, precision="bf16", device="cuda"),
    "gpu-124m-b32": dict(layers=12, heads=12, width=768, vocab=50304, batch=32, seq=1024, precision="bf16", device="cuda"),
}  # fmt: skip

PEAK_FLOPS = {  # dense bf16 tensor-core peaks by device name; none known for CPUs
    "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12,
    "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 70e12, "RTX 4090": 165e12,
}  # fmt: skip


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS.items() if key in name), None)


def model_config(spec: dict[str, Any], remat: bool) -> gpt.GPTConfig:
    return gpt.GPTConfig(
        vocab_size=spec["vocab"], block_size=spec["seq"], n_layer=spec["layers"],
        n_head=spec["heads"], n_embd=spec["width"], remat=remat,
    )  # fmt: skip


def flops_per_token(cfg: gpt.GPTConfig, seq: int) -> float:
    """6N + 12·L·H·Q·T (PaLM, appendix B), N without the position table."""
    n = gpt.param_count(cfg) - (cfg.block_size * cfg.n_embd if cfg.positions == "learned" else 0)
    return 6 * n + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq


def craft_runner(cfg: gpt.GPTConfig, precision: str, device: torch.device):
    optimizer = AdamW(weight_decay=0.1)
    state = to_device(init_state(gpt.init(cfg, seed=0), optimizer), device)
    step = make_train_step(
        functools.partial(gpt.loss, cfg=cfg), optimizer, Schedule(kind="constant", peak_lr=3e-4),
        precision=precision, clip_norm=1.0, compile=True,  # type: ignore[arg-type]
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
    decayed = [p for n, p in model.named_parameters() if p.ndim >= 2 and "tok" not in n and "pos" not in n]
    others = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "tok" not in n and "pos" not in n)]
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


def worker(name: str, impl: str, remat: bool, steps: int, warmup: int) -> dict[str, Any]:
    spec = CONFIGS[name]
    device = torch.device(spec["device"])
    cfg = model_config(spec, remat)
    make = craft_runner if impl == "craft" else baseline_runner
    run = make(cfg, spec["precision"], device)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        x = torch.randint(0, spec["vocab"], (spec["batch"], spec["seq"] + 1), generator=g)
        batches.append({"inputs": x[:, :-1].to(device), "targets": x[:, 1:].to(device)})
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    for i in range(warmup):
        run(batches[i % 4])
    sync()
    compile_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for i in range(steps):
        loss = run(batches[i % 4])
    sync()
    seconds = (time.perf_counter() - start) / steps
    tokens = spec["batch"] * spec["seq"]
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:  # the whole process's peak resident set (this process runs one implementation)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = peak_flops(device)
    achieved = flops_per_token(cfg, spec["seq"]) * tokens / seconds
    return {
        "suite": "train_step", "config": name, "impl": impl, "remat": remat,
        "ms_per_step": round(seconds * 1e3, 2), "tokens_per_s": round(tokens / seconds),
        "peak_memory_mb": round(peak_mb, 1), "mfu": round(achieved / peak, 4) if peak else None,
        "params": gpt.param_count(cfg), "warmup_s": round(compile_s, 1), "loss": round(float(loss), 4),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", default=None, help="run one config by name")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        name, impl, remat = json.loads(args.worker)
        print(json.dumps(worker(name, impl, remat, args.steps, args.warmup)), flush=True)
        return

    names = [args.only] if args.only else [n for n, s in CONFIGS.items() if s["device"] == args.device]
    rows = []
    for name in names:
        for impl, remat in (("baseline", False), ("craft", False), ("craft", True)):
            command = [sys.executable, __file__, "--worker", json.dumps([name, impl, remat]),
                       "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]  # fmt: skip
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                print(f"{name} {impl}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(result.stdout.strip().splitlines()[-1])
            baseline = next((r for r in rows if r["config"] == name and r["impl"] == "baseline"), None)
            row["vs_baseline"] = round(row["tokens_per_s"] / baseline["tokens_per_s"], 3) if baseline else None
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'config':<14} {'impl':<14} {'ms/step':>9} {'tok/s':>10} {'peak MB':>9} {'MFU':>6} {'vs base':>8}")
    for r in rows:
        impl = r["impl"] + (" +remat" if r["remat"] else "")
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        ratio = f"{r['vs_baseline']:.3f}" if r["vs_baseline"] else "-"
        print(f"{r['config']:<14} {impl:<14} {r['ms_per_step']:>9} {r['tokens_per_s']:>10} {r['peak_memory_mb']:>9} {mfu:>6} {ratio:>8}")


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    main()
