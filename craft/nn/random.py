"""Counter-based randomness from explicit keys: pure tensor ops, so it compiles and replays.

A key is a 0-d int64 tensor (or a 1-d tensor of keys, one per row of a batch). `fold_in(key, n)`
derives an independent key (per step, per layer, per row); `uniform(key, shape)` hashes (key,
position) into [0, 1). No global generator is touched, so the same key always gives the same
numbers, eager or compiled.
"""

from __future__ import annotations

import math

import torch

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors holding values below 2**32."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def key(seed: int) -> torch.Tensor:
    """A key from an integer seed."""
    return _mix32(torch.tensor(seed & _MASK32, dtype=torch.int64))


def fold_in(key: torch.Tensor, data: int | torch.Tensor) -> torch.Tensor:
    """A new key that depends on `key` and `data` (an int or an integer tensor)."""
    data = torch.as_tensor(data, dtype=torch.int64, device=key.device) & _MASK32
    return _mix32(_mix32(key ^ 0x9E3779B9) ^ data)


def uniform(key: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Floats in [0, 1), one per element of `shape`, determined by `key`: one key (0-d) for the
    whole tensor, or one per row (`[shape[0]]`), so that each row's numbers depend only on its
    own key, not on which rows share the tensor."""
    rows = key.shape[0] if key.ndim == 1 else 1
    if key.ndim > 1 or (key.ndim == 1 and (not shape or shape[0] != rows)):
        raise ValueError(f"keys of shape {tuple(key.shape)} do not fit a tensor of shape {shape}")
    numel = 1
    for size in shape:
        numel *= size
    counter = torch.arange(numel // max(rows, 1), dtype=torch.int64, device=key.device)
    # One round of the hash per element: two rounds made inductor's compile of a model with
    # dropout several times slower, for no visible gain in the masks.
    bits = _mix32(((counter * 0x9E3779B1) & _MASK32) ^ key.reshape(-1, 1))
    return (bits >> 8).to(torch.float32).mul_(1.0 / (1 << 24)).reshape(shape)


def normal(key: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Standard normal floats by Box-Muller from two `uniform` draws of `key` (one key, or one
    per row as for `uniform`), so a row's noise depends only on its own key."""
    u1 = 1.0 - uniform(fold_in(key, 1), shape)  # in (0, 1]: the log stays finite
    u2 = uniform(fold_in(key, 2), shape)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
