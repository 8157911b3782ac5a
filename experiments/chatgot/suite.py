"""The ChatGOT suite: GPTs of 1M, 10M and 100M parameters on the Game of Thrones season 1
scripts, at character and subword level, each row an ordinary Craft run.

    python experiments/chatgot/suite.py sweep char_1m      # tune a row's recipe (a sweep)
    python experiments/chatgot/suite.py run char_10m       # train a row with its gin file
    python experiments/chatgot/suite.py table              # RESULTS.md's table and plots

`sweep` runs the row's grid (below) over its gin file with `craft.main sweep`, keeps the
sweep's report in `sweeps/<row>-<device>/` and takes its best run as the row's result; `run`
trains the gin file as it is. Either way the row's best checkpoint (by val loss) is evaluated
on the val and test splits, two samples are drawn, and `results/<row>-<device>.json` records
the figures and the command that reproduces them. Each run has a time budget (--budget_s): a
run over it is stopped with SIGTERM, saves, and is reported as stopped.

On a GPU the runs are eager (TrainConfig.compile=False): at these lengths compiling costs more
than it saves. A row's recipe is the same on every device.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RESULTS = HERE / "results"
SWEEPS = HERE / "sweeps"

ROWS: dict[str, dict[str, Any]] = {
    # tokenizer, size, the sweep's grid, and the prompt of the samples
    "char_1m": {"params": "1m", "grid": ["Schedule.peak_lr=1e-3,3e-3,6e-3",
                                         "GPTConfig.dropout=0.0,0.1"]},
    "subword_1m": {"params": "1m", "grid": ["Schedule.peak_lr=1e-3,3e-3",
                                            "GPTConfig.dropout=0.1,0.2"]},
    "char_10m": {"params": "10m", "grid": ["Schedule.peak_lr=5e-4,1e-3,2e-3",
                                           "GPTConfig.dropout=0.1,0.2"]},
    "subword_10m": {"params": "10m", "grid": ["Schedule.peak_lr=5e-4,1e-3",
                                              "GPTConfig.dropout=0.2,0.3"]},
    "char_100m": {"params": "100m", "grid": ["GPTConfig.dropout=0.0,0.2",
                                             "AdamW.weight_decay=0.1,0.5"]},
    "subword_100m": {"params": "100m", "grid": ["GPTConfig.dropout=0.0,0.2",
                                                "AdamW.weight_decay=0.1,0.5"]},
}  # fmt: skip
PROMPT = "TYRION_LANNISTER:"
SMOKE = [  # --smoke: the whole path in seconds, on a toy model (for checking the driver)
    "--gin.TrainConfig.steps=4", "--gin.TrainConfig.eval_every=2",
    "--gin.TrainConfig.checkpoint_every=2", "--gin.GPTConfig.n_layer=1",
    "--gin.GPTConfig.n_embd=32", "--gin.GPTConfig.n_head=2", "--gin.Schedule.warmup_steps=1",
    "--gin.TrainConfig.eval_batches=2", "--gin.TextSampleConfig.tokens=5",
    "--gin.TrainConfig.compile=False",
]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["sweep", "run", "table"])
    parser.add_argument("rows", nargs="*", help=f"rows: {', '.join(ROWS)} (default: none)")
    parser.add_argument("--budget_s", type=float, default=3600.0,
                        help="seconds a run may train before it is stopped")  # fmt: skip
    parser.add_argument("--parallel", type=int, default=None, help="a sweep's runs at once")
    parser.add_argument("--outputs", default=str(REPO / "outputs" / "chatgot"))
    parser.add_argument(
        "--results", default=str(RESULTS), help="row files (sweep reports go beside: sweeps/)"
    )
    parser.add_argument("--smoke", action="store_true", help="toy settings: check the path")
    args = parser.parse_args()
    if args.smoke and args.results == str(RESULTS):  # toy rows never land among the real ones
        args.results = str(Path(args.outputs) / "smoke" / "results")
    if args.action == "table":
        from experiments.chatgot.table import write_table

        for path in write_table(Path(args.results)):
            print(path)
        return 0
    unknown = [row for row in args.rows if row not in ROWS]
    if unknown or not args.rows:
        parser.error(f"give rows from: {', '.join(ROWS)}")
    failed = 0
    for row in args.rows:
        try:
            result = (sweep_row if args.action == "sweep" else run_row)(row, args)
        except RowFailedError as error:
            print(f"chatgot: {row}: {error}", file=sys.stderr)
            failed += 1
            continue
        print(json.dumps({key: result[key] for key in ("row", "device", "status",
                          "best_val_loss", "val_bpc", "test_bpc", "wall_s")}))  # fmt: skip
    return 1 if failed else 0


class RowFailedError(Exception):
    pass


def device() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def device_flags() -> list[str]:
    return ["--gin.TrainConfig.compile=False"] if device() == "gpu" else []


def craft(*args: str, timeout: float | None = None, log: Path | None = None
          ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """`python -m craft.main ARGS`; past `timeout` it gets SIGTERM (it saves and stops)."""
    command = [sys.executable, "-m", "craft.main", *args]
    print("$ " + " ".join(command), flush=True)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path,
           "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled")}  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate()
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as file:
            file.write(f"$ {' '.join(command)}\n{out}\n")
    return subprocess.CompletedProcess(command, process.returncode, out, "")


def run_row(row: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train the row's gin file as it is, then evaluate it."""
    gin = f"experiments/chatgot/{row}.gin"
    run_dir = Path(args.outputs) / "runs" / f"{row}-{device()}-{_stamp()}"
    flags = [f"--gin_file={gin}", *device_flags(), *(SMOKE if args.smoke else [])]
    started = time.perf_counter()
    done = craft("run", f"--run_dir={run_dir}", *flags, timeout=args.budget_s,
                 log=run_dir.parent / f"{run_dir.name}.log")  # fmt: skip
    if done.returncode not in (0, 143):
        raise RowFailedError(f"the run failed (exit {done.returncode}):\n{done.stdout[-3000:]}")
    command = " ".join(["python -m craft.main", *flags])
    return finish(row, run_dir, command, time.perf_counter() - started, args)


def sweep_row(row: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run the row's sweep; its report is kept, its best run is the row's result."""
    from craft.sweeps.report import best_row, read_rows

    gin = f"experiments/chatgot/{row}.gin"
    grid = [f"--grid={flag}" for flag in ROWS[row]["grid"]]
    flags = [f"--gin_file={gin}", *device_flags(), *(SMOKE if args.smoke else [])]
    output = Path(args.outputs) / "sweeps"
    parallel = [f"--parallel={args.parallel}"] if args.parallel else []
    started = time.perf_counter()
    done = craft(
        "sweep",
        *flags,
        *grid,
        *parallel,
        f"--output_dir={output}",
        f"--name=chatgot_{row}_{device()}",
        f"--run_limit_s={args.budget_s:g}",
        # A safety net only: each run stops at its own limit.
        timeout=args.budget_s * _run_count(row) + 300,
    )
    print(done.stdout[-4000:])
    if done.returncode not in (0, 1):  # 1: some runs failed, the others count
        raise RowFailedError(f"the sweep failed (exit {done.returncode})")
    sweep_dir = sorted((output / f"chatgot_{row}_{device()}").glob("*/*/sweep.json"))[-1].parent
    kept = Path(args.results).parent / "sweeps" / f"{row}-{device()}"
    kept.mkdir(parents=True, exist_ok=True)
    for name in ("summary.md", "summary.csv", "curves.png", "sweep.json"):
        if (sweep_dir / name).is_file():
            shutil.copy2(sweep_dir / name, kept / name)
    best = best_row(read_rows(sweep_dir))  # the run the sweep's summary.md calls best
    if best is None:
        raise RowFailedError(f"no run of the sweep {sweep_dir} finished")
    overrides = [f"--gin.{key}={value}" for key, value in best.run.bindings.items()]
    command = " ".join(["python -m craft.main", *flags, *overrides])
    return finish(row, sweep_dir / best.run.label, command, time.perf_counter() - started, args,
                  sweep=f"sweeps/{kept.name}")  # fmt: skip


def finish(row: str, run_dir: Path, command: str, wall_s: float, args: argparse.Namespace,
           sweep: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Evaluate the run's best checkpoint on val and test, draw samples, write the row file."""
    from craft.checkpoint import best_checkpoint, read_meta

    summary = json.loads((run_dir / "summary.json").read_text())
    configs = json.loads((run_dir / "config.json").read_text())
    best = best_checkpoint(run_dir)
    if best is None:
        raise RowFailedError(f"{run_dir} has no checkpoint with a val loss")
    scores = {}
    for split in ("val", "test"):
        done = craft("evaluate", f"--checkpoint={best}", f"--split={split}")
        if done.returncode:
            raise RowFailedError(f"evaluate {split} failed:\n{done.stdout[-2000:]}")
        scores[split] = json.loads(done.stdout.strip().splitlines()[-1])
    samples = []
    tokens = "200" if row.startswith("char") else "60"
    for seed in (0, 1):
        done = craft("generate", f"--checkpoint={best}", f"--prompt={PROMPT}",
                     f"--max_new_tokens={tokens}", f"--seed={seed}")  # fmt: skip
        samples.append(done.stdout.strip() if done.returncode == 0 else "")
    train, data = configs["TrainConfig"], configs["DataConfig"]
    window = data.get("window") or configs["GPTConfig"]["block_size"]
    meta = read_meta(best)
    result = {
        "row": row,
        "tokenizer": row.split("_")[0],
        "size": ROWS[row]["params"],
        "device": device(),
        "device_name": _device_name(),
        "torch": _torch_version(),
        "date": dt.date.today().isoformat(),
        "params": _param_count(meta),
        "steps": summary["steps"],
        "best_step": int(meta["step"]),
        "tokens_seen": summary["steps"] * train["batch_size"] * window,
        "best_val_loss": summary.get("best_val_loss"),
        "val_bpc": scores["val"].get("bits_per_char"),
        "test_bpc": scores["test"].get("bits_per_char"),
        "test_loss": scores["test"]["loss"],
        "status": summary["status"],
        "train_s": summary["seconds"],
        "wall_s": round(wall_s, 1),
        "recipe": {
            "peak_lr": configs["Schedule"]["peak_lr"],
            "dropout": configs["GPTConfig"]["dropout"],
            "weight_decay": configs["AdamW"]["weight_decay"],
            "batch_size": train["batch_size"],
            "context": window,
            "precision": train["precision"],
        },
        "command": command,
        "sweep": sweep,
        "val_curve": _val_curve(run_dir),
        "samples": samples,
        "smoke": bool(args.smoke),
    }
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{row}-{device()}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _run_count(row: str) -> int:
    from craft.sweeps.space import expand, parse_grid

    return len(expand([parse_grid(flag) for flag in ROWS[row]["grid"]], [], None, 0))


def _val_curve(run_dir: Path) -> list[list[float]]:
    from craft.tracking.jsonl import read_metrics
    from craft.tracking.plots import latest_per_step, series

    steps, losses = series(latest_per_step(read_metrics(run_dir)), "val/loss")
    return [[s, v] for s, v in zip(steps, losses, strict=True)]


def _param_count(meta: dict[str, Any]) -> int:
    from craft.models import model_spec

    spec = model_spec(meta["model"])
    return spec.param_count(spec.config.model_validate(meta["model_config"]))


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.machine()}, {os.cpu_count()} cores"


def _torch_version() -> str:
    import torch

    return torch.__version__


def _stamp() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
