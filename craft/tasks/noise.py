"""DDPM's forward process: the noise schedule and q(x_t | x_0), as tensors and pure functions.

`alphas_bar[t]` is ᾱ_t = prod_{s <= t} (1 - β_s) for t = 0 .. T-1 (DDPM's t = 1 .. T): the share
of the clean image's variance left at step t. A noised image is
x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε with ε ~ N(0, I).

- linear (Ho et al. 2020): β rises linearly from `beta_start` to `beta_end`.
- cosine (Nichol & Dhariwal 2021): ᾱ follows cos²((t/T + s) / (1 + s) · π/2), s = 0.008, with
  β capped at 0.999 so the last steps stay invertible.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

ScheduleKind = Literal["linear", "cosine"]
COSINE_OFFSET = 0.008
MAX_BETA = 0.999


def alphas_bar(
    kind: ScheduleKind, steps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """ᾱ_t for t = 0 .. steps-1 (float64, strictly decreasing, in (0, 1))."""
    if steps < 1:
        raise ValueError(f"a noise schedule needs at least 1 step, got {steps}")
    if kind == "linear":
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(
                f"the linear schedule needs 0 < beta_start <= beta_end < 1, got {beta_start} "
                f"and {beta_end}"
            )
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    elif kind == "cosine":
        s = torch.arange(steps + 1, dtype=torch.float64) / steps
        f = torch.cos((s + COSINE_OFFSET) / (1 + COSINE_OFFSET) * (math.pi / 2)) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=MAX_BETA)
    else:
        raise ValueError(f"unknown noise schedule {kind!r}; valid: linear, cosine")
    return torch.cumprod(1 - betas, dim=0)


def q_sample(
    x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, table: torch.Tensor
) -> torch.Tensor:
    """x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε, per row (`t` `[B]` indexes `table` = ᾱ)."""
    ab = table[t].to(x0.dtype).view(-1, *[1] * (x0.ndim - 1))
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to floats in [-1, 1], the range the model denoises."""
    return pixels.float() * (2.0 / 255.0) - 1.0


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Model-range images to [0, 1] (clipped)."""
    return ((images + 1.0) * 0.5).clamp(0.0, 1.0)
