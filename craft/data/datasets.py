"""Batches from a prepared split, as a pure function of (seed, step).

Random training windows come from a generator seeded by (seed, step) alone, so a run resumed at
step N draws exactly the batches an uninterrupted run draws. Evaluation walks a split in
contiguous, non-overlapping windows, so every token is scored once.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from craft.errors import DataError

Batch = dict[str, torch.Tensor]


def train_batch(tokens: np.ndarray, *, window: int, batch_size: int, seed: int, step: int) -> Batch:
    """`batch_size` random windows of `window + 1` tokens: inputs and next-token targets."""
    windows = len(tokens) - window
    if windows < 1:
        raise DataError(f"a split of {len(tokens)} tokens holds no window of {window} + 1 tokens")
    generator = torch.Generator().manual_seed(_mix(seed, step))
    starts = torch.randint(0, windows, (batch_size,), generator=generator).numpy()
    rows = np.stack([np.asarray(tokens[s : s + window + 1], dtype=np.int64) for s in starts])
    data = torch.from_numpy(rows)
    return {"inputs": data[:, :-1].contiguous(), "targets": data[:, 1:].contiguous()}


def eval_batches(tokens: np.ndarray, *, window: int, batch_size: int) -> Iterator[Batch]:
    """The whole split in consecutive windows; the last, shorter one pads targets with -1."""
    total = len(tokens) - 1  # every token but the first is a target once
    if total < 1:
        raise DataError(f"a split of {len(tokens)} tokens has nothing to evaluate")
    starts = list(range(0, total, window))
    for first in range(0, len(starts), batch_size):
        chunk = starts[first : first + batch_size]
        inputs = np.zeros((len(chunk), window), dtype=np.int64)
        targets = np.full((len(chunk), window), -1, dtype=np.int64)
        for row, start in enumerate(chunk):
            length = min(window, total - start)
            piece = np.asarray(tokens[start : start + length + 1], dtype=np.int64)
            inputs[row, :length] = piece[:-1]
            targets[row, :length] = piece[1:]
        yield {"inputs": torch.from_numpy(inputs), "targets": torch.from_numpy(targets)}


def _mix(seed: int, step: int) -> int:
    """A 63-bit generator seed from (seed, step), different for every pair in practice."""
    value = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & (
        2**64 - 1
    )
    value ^= value >> 31
    return value & (2**63 - 1)
