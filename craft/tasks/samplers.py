"""Samplers of a trained diffusion model: DDPM ancestral and DDIM, with classifier-free guidance.

Both walk a descending list of timesteps (all T, or `steps` of them evenly spaced, as in
"respaced" DDPM and in DDIM). The model predicts the noise ε; with guidance w the prediction is
ε = ε(x, c) + w · (ε(x, c) - ε(x, ∅)), so w = 0 is the conditional model alone (one forward pass)
and w > 0 runs the conditional and unconditional rows as one batch of twice the size.

Randomness comes from keys: image i's starting noise and every later draw depend on (seed, i)
only, so a sample does not change with the batch it was drawn in, and the same seed gives the
same images eager or compiled (up to float rounding).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from craft.nn.random import fold_in, key, normal

SamplerKind = Literal["ddim", "ddpm"]
Denoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""`denoise(x_t, t, labels) -> ε`: the model with its params and config bound."""


def timesteps(total: int, steps: int) -> list[int]:
    """`steps` timesteps from T-1 down to 0, evenly spaced (all of them when steps = T)."""
    if not 1 <= steps <= total:
        raise ValueError(
            f"steps must be between 1 and {total} (the schedule's length), got {steps}"
        )
    picked = torch.linspace(0, total - 1, steps, dtype=torch.float64).round().long()
    return sorted({int(t) for t in picked}, reverse=True)


def guided(denoise: Denoise, guidance: float, null_label: int) -> Denoise:
    """ε with classifier-free guidance `guidance` (0: the conditional prediction alone)."""
    if guidance == 0:
        return denoise

    def both(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        null = torch.full_like(labels, null_label)
        eps = denoise(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
        conditional, unconditional = eps.chunk(2)
        return conditional + guidance * (conditional - unconditional)

    return both


def sample(
    denoise: Denoise,
    alphas_bar: torch.Tensor,
    labels: torch.Tensor,
    shape: tuple[int, ...],
    *,
    steps: int,
    seed: int,
    kind: SamplerKind = "ddim",
    guidance: float = 0.0,
    null_label: int,
    first_index: int = 0,
    compile: bool = False,
) -> torch.Tensor:
    """Images `[len(labels), *shape]` in the model's range ([-1, 1], clipped), one per label.

    `first_index`: the global index of the first image, so that a batch of a larger draw gets
    the noise the whole draw would give it. `compile`: torch.compile the per-step update.
    """
    if kind not in ("ddim", "ddpm"):
        raise ValueError(f"unknown sampler {kind!r}; valid: ddim, ddpm")
    device = labels.device
    table = alphas_bar.to(device=device, dtype=torch.float32)
    ts = timesteps(len(table), steps)
    image_keys = fold_in(key(seed), torch.arange(len(labels), device=device) + first_index)
    x = normal(fold_in(image_keys, -1), (len(labels), *shape))
    eps_fn = guided(denoise, guidance, null_label)
    update = _update
    if compile:  # the model and the update as graphs; a smaller last batch compiles once more
        eps_fn, update = torch.compile(eps_fn, dynamic=False), torch.compile(_update)
    one = torch.ones((), device=device)
    for index, t in enumerate(ts):
        ab_t = table[t]
        ab_prev = table[ts[index + 1]] if index + 1 < len(ts) else one
        t_rows = torch.full((len(labels),), t, dtype=torch.int64, device=device)
        eps = eps_fn(x, t_rows, labels)
        noise = normal(fold_in(image_keys, t), x.shape) if kind == "ddpm" else torch.zeros_like(x)
        x = update(x, eps, noise, ab_t, ab_prev, ddpm=kind == "ddpm")
    return x.clamp(-1.0, 1.0)


def _update(
    x: torch.Tensor,
    eps: torch.Tensor,
    noise: torch.Tensor,
    ab_t: torch.Tensor,
    ab_prev: torch.Tensor,
    *,
    ddpm: bool,
) -> torch.Tensor:
    """One step from t to the previous timestep. The clean image is predicted and clipped to
    [-1, 1] (it is known to lie there), and ε recomputed from it, before stepping:
    - DDIM (η = 0): x_prev = sqrt(ᾱ_prev) x̂_0 + sqrt(1 - ᾱ_prev) ε̂, deterministic;
    - DDPM: the posterior q(x_prev | x_t, x̂_0), with β = 1 - ᾱ_t / ᾱ_prev for the step taken,
      mean (sqrt(ᾱ_prev) β x̂_0 + sqrt(1 - β) (1 - ᾱ_prev) x_t) / (1 - ᾱ_t) and variance
      β (1 - ᾱ_prev) / (1 - ᾱ_t); no noise is added on the last step.
    """
    x0 = ((x - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()).clamp(-1.0, 1.0)
    if not ddpm:
        eps = (x - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
        return ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
    beta = 1 - ab_t / ab_prev
    mean = (ab_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - ab_prev) * x) / (1 - ab_t)
    variance = beta * (1 - ab_prev) / (1 - ab_t)
    return mean + variance.clamp(min=0).sqrt() * noise
