"""Tokenization throughput on ~50 MB of text (the GOT scripts repeated), char and subword.

Run: .venv/bin/python benchmarks/prepare.py [--megabytes=50] [--data_dir=data]
Prints one JSON line per measurement and a short table. Baselines, in the same run: a plain
Python dict lookup per character (char), and SentencePiece's own single-call encode (subword).
Targets on 2 cores: char >= 50 MB/s, subword >= 5 MB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import sentencepiece
import torch

from craft.data.sources.got import fetch_got
from craft.data.tokenizers import CharTokenizer, SentencePieceTokenizer


def best_of(runs: int, fn: Callable[[], object]) -> float:
    """The fastest of `runs` calls, in seconds (the least disturbed by other work)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=50.0)
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()

    season = fetch_got(Path(args.data_dir)).season.read_text(encoding="utf-8")
    repeats = max(1, round(args.megabytes * 1e6 / len(season.encode())))
    text = season * repeats
    megabytes = len(text.encode()) / 1e6
    char = CharTokenizer.train(season)
    # Trained once on one copy of the corpus, as `prepare` does on the train split.
    subword = SentencePieceTokenizer.train(season, vocab_size=2048)
    lookup = {c: i for i, c in enumerate(char.chars)}
    lines = text.split("\n")

    cases = {
        ("char", "craft"): lambda: char.encode(text),
        ("char", "python dict per char"): lambda: [lookup[c] for c in text],
        ("subword", "craft"): lambda: subword.encode(text),
        ("subword", "sentencepiece one call"): lambda: subword._sp.encode(text),
        ("subword", "sentencepiece per line, 1 thread"): lambda: subword._sp.encode(
            lines, num_threads=1
        ),
    }
    machine = f"{platform.machine()} {os.cpu_count()} cores"
    rows = []
    for (kind, impl), fn in cases.items():
        seconds = best_of(args.runs, fn)
        row = {
            "suite": "prepare",
            "tokenizer": kind,
            "impl": impl,
            "megabytes": round(megabytes, 1),
            "seconds": round(seconds, 3),
            "mb_per_s": round(megabytes / seconds, 1),
            "machine": machine,
            "torch": torch.__version__,
            "sentencepiece": sentencepiece.__version__,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'tokenizer':<9} {'implementation':<34} {'MB/s':>8}")
    for row in rows:
        print(f"{row['tokenizer']:<9} {row['impl']:<34} {row['mb_per_s']:>8}")


if __name__ == "__main__":
    main()
