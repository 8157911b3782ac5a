"""Peak memory of `prepare` on a large text: Craft's streaming path against reading it all.

Run: .venv/bin/python benchmarks/prepare_memory.py [--megabytes=200] [--data_dir=data]
     [--baseline_subword_megabytes=MB] [--only=char|subword] [--impls=craft,conventional]

The text is built from the GOT scripts' words (their frequencies, random lines of 3 to 24
words, a fixed seed), so that lines rarely repeat (SentencePiece folds repeated lines into one).
Each measurement runs in its own interpreter, which reports its own peak RSS
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`) and the RSS it started the work with (imports).
The conventional baseline is the code path `prepare` had before it streamed: read the whole text,
build the tokenizer from all of it (char) or from every line of the train split (subword),
encode each split at once, write. Prints one JSON line per measurement and a short table.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
VOCAB_SIZE = 2048


def build_text(season: str, megabytes: float, path: Path, seed: int = 0) -> None:
    """About `megabytes` MB of random lines over the GOT words, written in blocks."""
    counts = collections.Counter(re.findall(r"\S+", season))
    words = np.array(list(counts))
    weights = np.array(list(counts.values()), dtype=np.float64)
    # Each word once with a space after it, once ending a line.
    endings = np.concatenate([np.char.add(words, " "), np.char.add(words, "\n")]).astype(object)
    rng = np.random.default_rng(seed)
    mean_word = float(np.mean([len(w) + 1 for w in counts.elements()]))
    target = int(megabytes * 1e6)
    written = 0
    with open(path, "w", encoding="utf-8") as handle:
        while written < target:
            n = 1_000_000
            picks = rng.choice(len(words), size=n, p=weights / weights.sum())
            ends = rng.random(n) < 1 / 13.5  # lines of about 13 words
            block = "".join(endings[picks + len(words) * ends].tolist())
            handle.write(block)
            written += len(block.encode())
            if written > target + mean_word * n:
                break


def run_child(kind: str, impl: str, source: Path, out: Path) -> dict:
    """One measurement in a fresh interpreter; returns what it reports."""
    command = [sys.executable, __file__, "--child", kind, impl, str(source), str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} {impl} failed:\n{done.stderr[-3000:]}")
    result: dict = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def child(kind: str, impl: str, source: Path, out: Path) -> None:
    """Prepare `source` into `out`; print peak RSS, the RSS before the work, and seconds."""
    from craft.data.config import DataConfig, TokenizerConfig
    from craft.data.prepare import prepare

    start_rss = _current_rss_mb()
    started = time.perf_counter()
    tokenizer = "char" if kind == "char" else "subword"
    if impl == "craft":
        prepare(
            source,
            out,
            DataConfig(tokenizer=tokenizer),
            TokenizerConfig(vocab_size=VOCAB_SIZE),
        )
    else:
        conventional_prepare(source, out, tokenizer)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"peak_rss_mb": peak, "start_rss_mb": start_rss, "seconds": seconds}))


def conventional_prepare(source: Path, out: Path, tokenizer: str) -> None:
    """The code path before streaming: everything in memory at once."""
    from craft.data.prepare import split_text, token_dtype
    from craft.data.text import read_text
    from craft.data.tokenizers import CharTokenizer, SentencePieceTokenizer, Tokenizer

    text, _ = read_text(source)
    parts = split_text(text, (0.9, 0.05, 0.05))
    tok: Tokenizer
    if tokenizer == "char":
        tok = CharTokenizer.train(text)
    else:
        tok = SentencePieceTokenizer.train(parts[0], vocab_size=VOCAB_SIZE)
    dtype = token_dtype(tok.vocab_size)
    splits = zip(("train", "val", "test"), parts, strict=True)
    encoded = {name: tok.encode(part) for name, part in splits}
    out.mkdir(parents=True, exist_ok=True)
    for name, ids in encoded.items():
        (out / f"{name}.bin").write_bytes(ids.astype(dtype).tobytes())


def _current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=200.0)
    parser.add_argument("--baseline_subword_megabytes", type=float, default=None)
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--only", default=None, help="char or subword")
    parser.add_argument("--impls", default="craft,conventional")
    parser.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, impl, source, out = args.child
        child(kind, impl, Path(source), Path(out))
        return

    import sentencepiece
    import torch

    from craft.data.sources.got import fetch_got

    season = fetch_got(Path(args.data_dir)).season.read_text(encoding="utf-8")
    sizes = {
        ("char", "craft"): args.megabytes,
        ("char", "conventional"): args.megabytes,
        ("subword", "craft"): args.megabytes,
        ("subword", "conventional"): args.baseline_subword_megabytes or args.megabytes,
    }
    machine = f"{platform.machine()} {os.cpu_count()} cores"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        texts: dict[float, Path] = {}
        for (kind, impl), megabytes in sizes.items():
            if (args.only and kind != args.only) or impl not in args.impls.split(","):
                continue
            if megabytes not in texts:
                texts[megabytes] = Path(tmp) / f"text{megabytes:g}.txt"
                build_text(season, megabytes, texts[megabytes])
            source = texts[megabytes]
            input_mb = source.stat().st_size / 1e6
            result = run_child(kind, impl, source, Path(tmp) / f"{kind}-{impl}")
            shutil.rmtree(Path(tmp) / f"{kind}-{impl}", ignore_errors=True)
            row = {
                "suite": "prepare_memory",
                "tokenizer": kind,
                "impl": impl,
                "input_mb": round(input_mb, 1),
                "peak_rss_mb": round(result["peak_rss_mb"], 1),
                "start_rss_mb": round(result["start_rss_mb"], 1),
                "work_rss_mb": round(result["peak_rss_mb"] - result["start_rss_mb"], 1),
                "peak_over_input": round(result["peak_rss_mb"] / input_mb, 2),
                "seconds": round(result["seconds"], 1),
                "machine": machine,
                "torch": torch.__version__,
                "sentencepiece": sentencepiece.__version__,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        f"\n{'tokenizer':<9} {'implementation':<13} {'input MB':>9} {'peak RSS MB':>12} "
        f"{'peak/input':>11} {'seconds':>8}"
    )
    for row in rows:
        print(
            f"{row['tokenizer']:<9} {row['impl']:<13} {row['input_mb']:>9} "
            f"{row['peak_rss_mb']:>12} {row['peak_over_input']:>11} {row['seconds']:>8}"
        )


if __name__ == "__main__":
    main()
