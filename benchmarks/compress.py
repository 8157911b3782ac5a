"""Quantization and pruning of the ChatGOT char models: size, val loss and decode speed.

Quantization (`craft.main quantize`), per model: file size (against the fp32 params alone),
resident weight bytes (what the loaded params hold: integers and scales for quantized weights)
and the live heap a loaded model adds, whole-split val loss, and batch-1 KV-cache decode
tokens/s, fp32 against int8 and int4 (groups of 32 and 64), and int8 unpacked to fp32 at load
(`generate --dequantize`), in alternating rounds in one process.

Pruning: gradual magnitude pruning during an ordinary got_char run (PruneConfig, cubic from
step 250 to 1,500) to 50 %, 75 % and 90 % of every linear weight; structured pruning
(`prune --structured`) of 25 % and 50 % of the MLP neurons followed by a short fine-tune
(RunConfig.init_from); val loss of each, decode tokens/s of the structured ones against the
dense model. Writes a table, JSON lines and `benchmarks/pruning.png`.

Run (from the repository root, after the data is prepared):
  .venv/bin/python benchmarks/compress.py --checkpoint_1m=RUN_OR_FILE --checkpoint_10m=...
Without a checkpoint the model is trained first with gin/got_char.gin (and gin/models/10m.gin).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from craft import tree  # noqa: E402
from craft.checkpoint import resolve  # noqa: E402
from craft.generate import SamplingConfig, generate  # noqa: E402
from craft.inference import load_for_inference  # noqa: E402
from craft.nn.quantized import QuantizedWeight  # noqa: E402
from craft.train.evaluate import evaluate  # noqa: E402
from craft.train.peak_memory import live_heap_bytes  # noqa: E402
from craft.train.quantized_params import dequantized  # noqa: E402

GIN = REPO / "gin" / "got_char.gin"
SIZES = {"1m": [], "10m": [f"--gin_file={REPO / 'gin' / 'models' / '10m.gin'}"]}
QUANTIZED = {
    "int8": ["--bits=8"],
    "int4-g32": ["--bits=4"],
    "int4-g64": ["--bits=4", "--group_size=64"],
}
PRUNE_START, PRUNE_END = 250, 1500
UNPACKED = "+unpacked"
"""A quantized checkpoint dequantized at load (`generate --dequantize`)."""


def cli(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "craft.main", *args], cwd=REPO, capture_output=True, text=True
    )
    if result.returncode:
        raise SystemExit(f"craft.main {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def train(folder: Path, size: str, *extra: str) -> Path:
    """An ordinary got_char run into `folder`; its newest checkpoint."""
    quiet = ["--gin.MetricsConfig.progress_bar=False", "--gin.MetricsConfig.wandb='disabled'"]
    threads = [f"--gin.TrainConfig.threads={torch.get_num_threads()}"]
    cli(f"--gin_file={GIN}", *SIZES[size], f"--run_dir={folder}", *quiet, *threads, *extra)
    return resolve(folder)


def weight_bytes(params: Any) -> int:
    return sum(
        leaf.stored_bytes() if isinstance(leaf, QuantizedWeight) else leaf.numel() * 4
        for leaf in tree.leaves(params)
    )


def val_loss(path: Path) -> float:
    loaded = load_for_inference(path)
    task = loaded.task()
    return float(evaluate(task, loaded.loss_fn(task), loaded.params, "val", batch_size=64)["loss"])


def decode_seconds(loaded: Any, tokens: int) -> float:
    sampling = SamplingConfig.checked(max_new_tokens=tokens, seed=0, temperature=1.0)
    start = time.perf_counter()
    for _ in generate(loaded.model_name, loaded.params, loaded.model_cfg, [0], sampling):
        pass
    return time.perf_counter() - start


def load(path: Path, unpack: bool = False) -> Any:
    """A checkpoint as `generate` reads it (`unpack`: as with --dequantize)."""
    loaded = load_for_inference(path)
    return replace(loaded, params=dequantized(loaded.params)) if unpack else loaded


def decode_rates(paths: dict[str, Path], tokens: int = 60, rounds: int = 7) -> dict[str, float]:
    """Tokens/s per model, median over alternating rounds (machine noise hits all alike). A
    name ending in "+unpacked" loads its checkpoint dequantized."""
    models = {name: load(path, name.endswith(UNPACKED)) for name, path in paths.items()}
    for loaded in models.values():
        decode_seconds(loaded, 8)  # warm: allocations, kernel layouts
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, loaded in models.items():
            times[name].append(decode_seconds(loaded, tokens))
    return {name: tokens / statistics.median(t) for name, t in times.items()}


def resident_heap(path: Path, unpack: bool = False) -> int:
    """Live heap bytes a loaded model adds, after one decode (kernel layouts included)."""
    gc.collect()
    before = live_heap_bytes()
    loaded = load(path, unpack)
    decode_seconds(loaded, 4)
    gc.collect()
    held = live_heap_bytes() - before
    del loaded
    return held


def fp32_weights_file(source: Path, work: Path) -> Path:
    """The model's fp32 params alone (a training checkpoint also holds the optimizer state):
    the size a quantized file is compared with."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "fp32-params.safetensors"
    params = tree.to_dotted(load_for_inference(source).params)
    save_file({name: value.contiguous() for name, value in params.items()}, str(path))
    return path


def quantization(size: str, source: Path, work: Path) -> list[dict[str, Any]]:
    paths = {"fp32": source}
    for name, flags in QUANTIZED.items():
        made = cli("quantize", f"--checkpoint={source}", f"--output={work / name}", *flags)
        paths[name] = Path(json.loads(made)["checkpoint"])
    paths["int8" + UNPACKED] = paths["int8"]
    rates = decode_rates(paths)
    files = {"fp32": fp32_weights_file(source, work)}
    rows = []
    base: dict[str, float] = {}
    for name, path in paths.items():
        unpack = name.endswith(UNPACKED)
        row = {
            "model": size, "weights": name, "file_bytes": files.get(name, path).stat().st_size,
            "weight_bytes": weight_bytes(load(path, unpack).params),
            "heap_bytes": resident_heap(path, unpack), "val_loss": val_loss(path),
            "decode_tok_s": rates[name],
        }  # fmt: skip
        base = base or row
        row["file_ratio"] = row["file_bytes"] / base["file_bytes"]
        row["weight_ratio"] = row["weight_bytes"] / base["weight_bytes"]
        row["val_loss_change"] = row["val_loss"] - base["val_loss"]
        row["decode_ratio"] = row["decode_tok_s"] / base["decode_tok_s"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def pruning(
    size: str, source: Path, work: Path, sparsities: list[float], structured: bool
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {"model": size, "kind": "dense", "share": 0.0, "val_loss": val_loss(source)}
    ]
    for share in sparsities:
        schedule = [
            f"--gin.PruneConfig.sparsity={share}",
            f"--gin.PruneConfig.start_step={PRUNE_START}",
            f"--gin.PruneConfig.end_step={PRUNE_END}",
        ]
        loss = val_loss(train(work / f"gradual-{share}", size, *schedule))
        rows.append({"model": size, "kind": "unstructured", "share": share, "val_loss": loss})
        print(json.dumps(rows[-1]), flush=True)
    shrunk = {"dense": source}
    short = [
        "--gin.TrainConfig.steps=300",
        "--gin.Schedule.peak_lr=1e-3",
        "--gin.Schedule.warmup_steps=30",
        "--gin.TrainConfig.eval_every=0",
        "--gin.TrainConfig.checkpoint_every=0",
    ]
    if structured:  # the control: the dense model given the same short fine-tune
        tuned = train(work / "tuned-dense", size, f"--gin.RunConfig.init_from='{source}'", *short)
        loss = val_loss(tuned)
        rows.append({"model": size, "kind": "dense+tune", "share": 0.0, "val_loss": loss})
        print(json.dumps(rows[-1]), flush=True)
    for share in (0.25, 0.5) if structured else ():
        output = work / f"structured-{share}"
        flags = [f"--checkpoint={source}", f"--sparsity={share}", "--structured"]
        report = json.loads(cli("prune", *flags, f"--output={output}"))
        pruned = Path(report["checkpoint"])
        gin = [f"--gin.{line.replace(' = ', '=')}" for line in report["fine_tune_gin"]]
        init = f"--gin.RunConfig.init_from='{pruned}'"
        tuned = train(work / f"tuned-{share}", size, *gin, init, *short)
        shrunk[f"mlp-{share}"] = tuned
        rows.append({
            "model": size, "kind": "structured", "share": share, "params": report["params_after"],
            "val_loss_before_tune": val_loss(pruned), "val_loss": val_loss(tuned),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    rates = decode_rates(shrunk) if structured else {}
    for row in rows:
        name = {"dense": "dense", "structured": f"mlp-{row['share']}"}.get(str(row["kind"]))
        if name in rates:
            row["decode_tok_s"] = rates[name]
            row["decode_ratio"] = rates[name] / rates["dense"]
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, marker in (("unstructured", "o"), ("structured", "s")):
        for size in sorted({str(r["model"]) for r in rows}):
            # structured rows are fine-tuned: they start from the dense model tuned alike
            start = "dense+tune" if kind == "structured" else "dense"
            found = [r for r in rows if r["model"] == size and r["kind"] in (start, "dense")]
            dense = max(found, key=lambda r: r["kind"] == start)
            points = [(0.0, dense["val_loss"])] + [
                (r["share"], r["val_loss"])
                for r in rows
                if r["model"] == size and r["kind"] == kind
            ]
            if len(points) > 1:
                ax.plot(*zip(*points, strict=True), marker=marker, label=f"{size} {kind}")
    ax.set_xlabel("share pruned (weights; structured: MLP neurons)")
    ax.set_ylabel("val loss (nats/char)")
    ax.set_title("ChatGOT char: val loss against pruning")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint_1m")
    parser.add_argument("--checkpoint_10m")
    parser.add_argument("--parts", default="quantize,prune")
    parser.add_argument("--gradual_sizes", default="1m", help="10M: 12 min a run on 2 cores")
    parser.add_argument("--structured_sizes", default="1m,10m")
    parser.add_argument("--sparsities", default="0.5,0.75,0.9")
    parser.add_argument("--threads", type=int, help="torch threads here and in the runs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory(prefix="craft-compress-") as tmp:
        work = Path(tmp)
        sources = {}
        for size in SIZES:
            given = getattr(args, f"checkpoint_{size}")
            sources[size] = resolve(given) if given else train(work / f"dense-{size}", size)
        rows: list[dict[str, Any]] = []
        if "quantize" in parts:
            for size, source in sources.items():
                rows += quantization(size, source, work / f"q-{size}")
        pruned: list[dict[str, Any]] = []
        if "prune" in parts:
            sparsities = [float(s) for s in args.sparsities.split(",")]
            gradual, structured = args.gradual_sizes.split(","), args.structured_sizes.split(",")
            for size in dict.fromkeys(gradual + structured):
                shares = sparsities if size in gradual else []
                folder = work / f"p-{size}"
                pruned += pruning(size, sources[size], folder, shares, size in structured)
            plot(pruned, REPO / "benchmarks" / "pruning.png")
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads")
    if rows:
        print(
            "\n| model | weights | file MB | x fp32 | resident weights x fp32 | heap MB "
            "| val loss | change | decode tok/s | x fp32 |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(
                f"| {r['model']} | {r['weights']} | {r['file_bytes'] / 1e6:.2f} "
                f"| {r['file_ratio']:.3f} | {r['weight_ratio']:.3f} | {r['heap_bytes'] / 1e6:.2f} "
                f"| {r['val_loss']:.4f} | {r['val_loss_change']:+.4f} "
                f"| {r['decode_tok_s']:.0f} | {r['decode_ratio']:.2f} |"
            )
    if pruned:
        print("\n| model | pruning | share | val loss | decode tok/s | x dense |")
        print("|---|---|---:|---:|---:|---:|")
        for r in pruned:
            rate = "- | -"
            if "decode_tok_s" in r:
                rate = f"{r['decode_tok_s']:.0f} | {r['decode_ratio']:.2f}"
            share, loss = r["share"], r["val_loss"]
            print(f"| {r['model']} | {r['kind']} | {share:.2f} | {loss:.4f} | {rate} |")


if __name__ == "__main__":
    main()
