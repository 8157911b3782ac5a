"""Decode throughput: the GPT's KV cache against recomputing the whole context for every token.

Baseline: `craft.generate.generate_recompute`, a full `gpt.apply` over the context per new token
(the same context policy as the cache, so greedy decoding gives the same ids, which each row
reports). Contenders: the cached decode loop, eager and with its one-token step compiled (on a
GPU also replayed as a CUDA graph). Batch 1, greedy, a short random prompt; all in one process,
timed in alternating rounds (median), so machine noise hits every implementation alike.
Compilation happens in the warm-up call.

Run: .venv/bin/python benchmarks/generate.py [--device=cpu|cuda] [--config=1m-char|10m-char|gpt2]
Prints JSON lines and a table: ms/token, tokens/s and the speedup over recomputation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from craft import tree  # noqa: E402
from craft.generate import SamplingConfig, generate, generate_recompute  # noqa: E402
from craft.models import gpt  # noqa: E402

CONFIGS: dict[str, dict[str, int]] = {
    # The ChatGOT 1M char model's shape; block_size 512 so that prompt + 256 new tokens fit.
    "1m-char": {"n_layer": 4, "n_head": 4, "n_embd": 128, "vocab_size": 76, "block_size": 512},
    "10m-char": {"n_layer": 6, "n_head": 6, "n_embd": 384, "vocab_size": 76, "block_size": 512},
    # GPT-2 small (124M), vocab padded to a multiple of 64; bf16 params on CUDA.
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768, "vocab_size": 50304, "block_size": 1024},
}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def runners(
    cfg: gpt.GPTConfig, params: dict, prompt: list[int], sampling: SamplingConfig, device: str,
    compile: bool,
) -> dict[str, Callable[[], list[int]]]:  # fmt: skip
    found: dict[str, Callable[[], list[int]]] = {
        "recompute": lambda: list(generate_recompute(params, cfg, prompt, sampling, device=device)),
        "cache": lambda: list(generate("gpt", params, cfg, prompt, sampling, device=device)),
    }
    if compile:
        found["cache+compile"] = lambda: list(
            generate("gpt", params, cfg, prompt, sampling, device=device, compile=True)
        )
    if compile and device == "cuda":  # the compiled step replayed as a CUDA graph
        found["cache+graphs"] = lambda: list(
            generate("gpt", params, cfg, prompt, sampling, device=device, compile="reduce-overhead")
        )
    return found


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    cfg = gpt.GPTConfig(**CONFIGS[args.config])
    if args.prompt_tokens + args.new_tokens > cfg.block_size:
        # Past block_size the cache refills and recomputation restarts: not what this measures.
        raise SystemExit(f"prompt + new tokens must fit block_size {cfg.block_size}")
    dtype = torch.bfloat16 if device.type == "cuda" and args.config == "gpt2" else torch.float32
    params = tree.tree_map(lambda p: p.to(device, dtype), gpt.init(cfg, seed=0))
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, cfg.vocab(), (args.prompt_tokens,), generator=generator).tolist()
    sampling = SamplingConfig(temperature=0, max_new_tokens=args.new_tokens)
    impls = runners(cfg, params, prompt, sampling, args.device, compile=not args.no_compile)

    warmup_s, tokens, times = {}, {}, {name: [] for name in impls}
    for name, fn in impls.items():
        start = time.perf_counter()
        tokens[name] = fn()  # compiles, for cache+compile
        warmup_s[name] = time.perf_counter() - start
    for _ in range(args.rounds):
        for name, fn in impls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    base = statistics.median(times["recompute"])
    rows = []
    for name in impls:
        seconds = statistics.median(times[name])
        rows.append(
            {
                "suite": "generate",
                "config": args.config,
                "impl": name,
                "tokens_per_s": round(args.new_tokens / seconds, 1),
                "ms_per_token": round(seconds / args.new_tokens * 1e3, 3),
                "vs_recompute": round(base / seconds, 2),
                "new_tokens": args.new_tokens,
                "prompt_tokens": args.prompt_tokens,
                "same_tokens_as_recompute": tokens[name] == tokens["recompute"],
                "warmup_s": round(warmup_s[name], 1),
                "dtype": str(dtype).removeprefix("torch."),
                "params": gpt.param_count(cfg),
                "device": device_name(device),
                "torch": torch.__version__,
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = ("config", "impl", "ms/token", "tok/s", "vs recompute", "same ids", "warmup s")
    keys = ("config", "impl", "ms_per_token", "tokens_per_s", "vs_recompute",
            "same_tokens_as_recompute", "warmup_s")  # fmt: skip
    widths = (8, 14, 9, 9, 12, 8, 9)
    print("\n" + " ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        cells = [row[k] for k in keys]
        cells[4] = f"{cells[4]:.2f}x"
        print(" ".join(f"{c!s:>{w}}" for c, w in zip(cells, widths, strict=True)))
    print(f"\n{rows[0]['device']}, torch {rows[0]['torch']}, {rows[0]['dtype']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--config", choices=list(CONFIGS), default="1m-char")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled cache path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args)
    for row in rows:
        print(json.dumps(row), flush=True)
    print_table(rows)


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    main()
