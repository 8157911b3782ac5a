"""Sweep throughput: the same sweep of the 1M ChatGOT config run one at a time (all CPU threads
to the one run) and K at a time (the threads split), in one invocation.

Each sweep is `craft.main sweep` through a subprocess, timed by the wall clock; a short run
first warms the inductor cache, as any second sweep on a machine finds it. Prints a JSON line per
setting and the ratio.

    .venv/bin/python benchmarks/sweep_parallel.py [--steps=300] [--parallel=1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GRID = ["--grid=Schedule.peak_lr=1e-3,3e-3", "--grid=GPTConfig.dropout=0.0,0.1"]


def sweep(output: Path, steps: int, parallel: int) -> float:
    command = [
        sys.executable, "-m", "craft.main", "sweep", "--gin_file=gin/got_char.gin", *GRID,
        f"--parallel={parallel}", f"--output_dir={output}", f"--name=p{parallel}",
        f"--gin.TrainConfig.steps={steps}", f"--gin.TrainConfig.eval_every={steps}",
        f"--gin.TrainConfig.checkpoint_every={steps}", f"--gin.TrainConfig.sample_every={steps}",
        "--gin.MetricsConfig.wandb='disabled'",
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"the sweep failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--parallel", default="1,2")
    args = parser.parse_args()
    settings = [int(k) for k in args.parallel.split(",")]
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder)
        # Warm-up: one run of each thread count the sweeps will use fills the compile cache.
        for parallel in sorted(set(settings)):
            subprocess.run(
                [sys.executable, "-m", "craft.main", "--gin_file=gin/got_char.gin",
                 "--gin.TrainConfig.steps=2", "--gin.Schedule.warmup_steps=1",
                 "--gin.MetricsConfig.wandb='disabled'",
                 f"--gin.RunConfig.output_dir={output / 'warm'}"],
                cwd=REPO, capture_output=True, check=True,
                env={**os.environ, "OMP_NUM_THREADS": str(max(1, cores // parallel))},
            )  # fmt: skip
        results = {}
        for parallel in settings:
            seconds = sweep(output, args.steps, parallel)
            results[parallel] = seconds
            print(json.dumps({"bench": "sweep", "runs": 4, "steps": args.steps,
                              "parallel": parallel, "cores": cores,
                              "seconds": round(seconds, 1)}), flush=True)  # fmt: skip
    base = results[settings[0]]
    for parallel, seconds in results.items():
        print(
            f"parallel={parallel}: {seconds:6.1f} s  ({base / seconds:.2f}x parallel={settings[0]})"
        )


if __name__ == "__main__":
    main()
