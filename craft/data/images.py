"""Prepared image data (uint8 N, C, H, W arrays and a meta.json) and batches drawn from it.

A prepared folder holds `{train,test}_{images,labels}.npy` and `meta.json` (written last, see
`craft.data.sources.mnist`). Validation rows are carved from the end of train, so the test split
stays held out. Training batches are a pure function of (seed, step, size), so a resumed run
draws what an uninterrupted one would.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from craft.data.datasets import _mix
from craft.errors import DataError

Batch = dict[str, torch.Tensor]
SPLITS = ("train", "val", "test")
_META_KEYS = ("class_names", "mean", "std", "image_shape")


@dataclass(frozen=True)
class ImageData:
    """Memory-mapped splits of a prepared folder and what its meta.json says about them."""

    directory: Path
    meta: dict[str, Any]
    splits: dict[str, tuple[np.ndarray, np.ndarray]]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 [N, C, H, W], labels [N]) of "train", "val" or "test"."""
        if name not in self.splits:
            raise DataError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
        return self.splits[name]

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def mean(self) -> float:
        """Mean train pixel, scaled to [0, 1]."""
        return float(self.meta["mean"])

    @property
    def std(self) -> float:
        return float(self.meta["std"])

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["image_shape"])


def open_images(directory: Path, *, val_size: int = 5000) -> ImageData:
    """Open a prepared folder; val is the last `val_size` train rows, train the rest."""
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise DataError(
            f"no prepared image data in {directory} (meta.json missing): "
            f"run `python -m craft.main fetch mnist` first"
        )
    try:
        meta = json.loads(meta_path.read_text())
        missing = [key for key in _META_KEYS if key not in meta]
    except (ValueError, TypeError):
        raise DataError(f"{meta_path} is not valid JSON; prepare the data again") from None
    if missing:
        raise DataError(f"{meta_path} lacks {', '.join(missing)}; prepare the data again")
    arrays = {}
    for split in ("train", "test"):
        images, labels = (
            _load(directory / f"{split}_images.npy"),
            _load(directory / f"{split}_labels.npy"),
        )
        if images.shape[1:] != tuple(meta["image_shape"]) or len(labels) != len(images):
            raise DataError(
                f"{directory}: {split} images {list(images.shape)} and labels {list(labels.shape)} "
                f"do not fit image shape {meta['image_shape']}; prepare the data again"
            )
        arrays[split] = (images, labels)
    train_images, train_labels = arrays["train"]
    if not 0 <= val_size < len(train_images):
        raise DataError(f"val_size={val_size} must be in [0, {len(train_images)}) (the train rows)")
    cut = len(train_images) - val_size
    splits = {
        "train": (train_images[:cut], train_labels[:cut]),
        "val": (train_images[cut:], train_labels[cut:]),
        "test": arrays["test"],
    }
    return ImageData(directory, meta, splits)


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {path} ({error}); prepare the data again") from None


def train_batch(
    images: np.ndarray, labels: np.ndarray, *, seed: int, step: int, size: int, max_shift: int = 0
) -> Batch:
    """`size` rows of the split, optionally shifted by up to `max_shift` pixels per axis.

    Rows follow one seeded permutation per epoch (each image once per epoch, as a shuffling
    data loader gives, so runs compare like for like with conventional baselines); batch `step`
    takes positions [step * size, (step + 1) * size) of that endless sequence. Shifts come from
    a generator seeded by (seed, step); vacated pixels are zero.
    """
    count = len(images)
    if count < 1 or size < 1:
        raise DataError(f"cannot draw a batch of {size} from a split of {count} images")
    positions = np.arange(step * size, (step + 1) * size, dtype=np.int64)
    epochs = positions // count
    rows = np.empty(size, dtype=np.int64)
    for epoch in np.unique(epochs):  # at most two epochs unless size > count
        here = epochs == epoch
        rows[here] = _permutation(seed, int(epoch), count)[positions[here] % count]
    batch = torch.from_numpy(np.asarray(images[rows]))
    picked = torch.from_numpy(np.asarray(labels[rows], dtype=np.int64))
    if max_shift > 0:
        shifts = torch.Generator().manual_seed(_mix(_mix(seed, step), 1))
        batch = _shift(batch, torch.randint(-max_shift, max_shift + 1, (size, 2), generator=shifts))
    return {"images": batch.contiguous(), "labels": picked}


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, count: int) -> np.ndarray:
    """The order of epoch `epoch`; cached because every step of the epoch needs it."""
    generator = torch.Generator().manual_seed(_mix(_mix(seed, epoch), 0))
    permutation = torch.randperm(count, generator=generator).numpy()
    permutation.flags.writeable = False  # shared by every caller through the cache
    return permutation


def _shift(images: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Move image i down by offsets[i, 0] and right by offsets[i, 1] pixels, filling with zero."""
    n, c, h, w = images.shape
    pad = int(offsets.abs().max())
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    ph, pw = h + 2 * pad, w + 2 * pad
    # out[y, x] = image[y - dy, x - dx] = padded[y - dy + pad, x - dx + pad], gathered with one
    # flat index (faster than four broadcast index tensors).
    ys = pad - offsets[:, 0, None] + torch.arange(h)
    xs = pad - offsets[:, 1, None] + torch.arange(w)
    planes = (torch.arange(n * c).view(n, c) * (ph * pw))[:, :, None, None]
    index = planes + (ys * pw)[:, None, :, None] + xs[:, None, None, :]
    return padded.reshape(-1)[index.reshape(-1)].view(n, c, h, w)


def eval_batches(images: np.ndarray, labels: np.ndarray, *, size: int) -> Iterator[Batch]:
    """The whole split in order, `size` rows at a time; the last batch may be shorter."""
    if size < 1:
        raise DataError(f"eval batch size must be positive, got {size}")
    for start in range(0, len(images), size):
        yield {
            "images": torch.from_numpy(np.array(images[start : start + size])),
            "labels": torch.from_numpy(np.array(labels[start : start + size], dtype=np.int64)),
        }
