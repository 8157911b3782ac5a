"""Pure convolution and pooling layers over `[B, C, H, W]` tensors.

Conv weights use PyTorch's layout, `w` `[out, in, k, k]` and `b` `[out]`, so a params tree loads
into `nn.Conv2d` as its `weight` and `bias`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from craft.tree import Params

Padding = Literal["same"] | int


def init_conv2d(
    c_in: int, c_out: int, kernel: int, generator: torch.Generator, *, bias: bool = True
) -> Params:
    """He (Kaiming) normal over the fan-in, zero bias.

    std = sqrt(2 / (c_in * k * k)) keeps the variance of ReLU activations constant from layer to
    layer, so a net without batch norm starts neither vanishing nor exploding. (PyTorch's default,
    uniform with a = sqrt(5), has a sixth of that variance and shrinks the signal with depth.)
    """
    std = math.sqrt(2.0 / (c_in * kernel * kernel))
    params: Params = {"w": torch.randn((c_out, c_in, kernel, kernel), generator=generator) * std}
    if bias:
        params["b"] = torch.zeros(c_out)
    return params


def conv2d(
    params: Params, x: torch.Tensor, *, stride: int = 1, padding: Padding = "same"
) -> torch.Tensor:
    """2-d convolution. "same" pads k // 2 on each side (odd kernels: the output is
    ceil(H / stride) wide); an int pads that much on each side."""
    w = params["w"]
    if padding == "same":
        kernel = w.shape[-1]
        if kernel % 2 == 0:
            raise ValueError(f'padding="same" needs an odd kernel, got {kernel}')
        padding = kernel // 2
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f'padding must be "same" or an int >= 0, got {padding!r}')
    return F.conv2d(x, w, params.get("b"), stride=stride, padding=padding)


def max_pool2d(x: torch.Tensor, size: int) -> torch.Tensor:
    """Max over non-overlapping `size` x `size` windows (a ragged edge is dropped)."""
    return F.max_pool2d(x, size)


def avg_pool2d(x: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over non-overlapping `size` x `size` windows (a ragged edge is dropped)."""
    return F.avg_pool2d(x, size)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """`[B, C, H, W]` -> `[B, C]`: the mean over all positions."""
    return x.mean(dim=(-2, -1))


def init_group_norm(channels: int) -> Params:
    return {"scale": torch.ones(channels), "bias": torch.zeros(channels)}


def group_norm(params: Params, x: torch.Tensor, groups: int, eps: float = 1e-5) -> torch.Tensor:
    """Normalise each example over groups of channels (and all positions): no batch statistics,
    so a row's output depends on that row alone."""
    return F.group_norm(x, groups, params["scale"], params["bias"], eps)
