"""A tiny synthetic stand-in for prepared MNIST: class k lights a block at a place of its own,
so a small CNN learns it in a few steps. Written in the prepared format, so `fetch` finds it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from craft.data.sources.mnist import FORMAT


def write_digits(data_dir: Path, *, train: int = 600, test: int = 200, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    out = data_dir / "prepared" / "mnist"
    out.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, count in (("train", train), ("test", test)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images = rng.integers(0, 60, (count, 1, 28, 28)).astype(np.uint8)
        for row, label in enumerate(labels):
            top, left = 2 + 5 * (label // 5), 2 + 5 * (label % 5)
            images[row, 0, top : top + 5, left : left + 5] = 255
        arrays[split] = (images, labels)
        np.save(out / f"{split}_images.npy", images)
        np.save(out / f"{split}_labels.npy", labels)
    pixels = arrays["train"][0] / 255.0
    meta = {
        "dataset": "mnist", "format": FORMAT, "source": "synthetic",
        "class_names": [str(d) for d in range(10)], "image_shape": [1, 28, 28],
        "mean": float(pixels.mean()), "std": float(pixels.std()),
    }  # fmt: skip
    (out / "meta.json").write_text(json.dumps(meta))
    return out
