"""Weight-only quantization: int8 per output channel, int4 in groups, and their inverses.

int8: `w ~ q * scale[row]`, q in [-127, 127], scale = max|w[row]| / 127, so every element is
within scale / 2 of its weight. int4: each row is cut into groups of `group_size` inputs;
`w ~ q * scale + low`, q in [0, 15] (asymmetric: the group's range, not ±max, is split in 15
steps), with scale and low stored as fp16. `low` is rounded down and `scale` up to fp16, so
every weight stays inside the group's grid and is again within scale / 2. Two int4 values
share a byte: the even input in the low nibble, the odd one in the high nibble.
"""

from __future__ import annotations

import torch

INT4_GROUP_SIZES = (32, 64)
FP16_MAX = float(torch.finfo(torch.float16).max)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values int8 `[out, in]`, scales fp32 `[out]`) for a 2-D weight."""
    _check_matrix(weight)
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
    values = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return values, scales


def dequantize_int8(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return values.float() * scales[:, None]


def quantize_int4(
    weight: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed uint8 `[out, in / 2]`, scales fp16 `[out, in / group]`, lows fp16 likewise)."""
    _check_matrix(weight)
    out, inputs = weight.shape
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"int4 group size must be one of {INT4_GROUP_SIZES}, got {group_size}")
    if inputs % group_size:
        raise ValueError(f"{inputs} inputs do not split into groups of {group_size}")
    w = weight.detach().float().reshape(out, inputs // group_size, group_size)
    if w.abs().max() > FP16_MAX / 2:
        raise ValueError("weights beyond ±32,752 do not fit int4's fp16 scales")
    low = _fp16_toward(w.amin(dim=-1), down=True)
    high = w.amax(dim=-1)
    scale = _fp16_toward((high - low.float()) / 15.0, down=False)
    scale = torch.where(scale > 0, scale, torch.full_like(scale, _FP16_SMALLEST))
    q = torch.round((w - low.float()[..., None]) / scale.float()[..., None]).clamp(0, 15)
    return pack_int4(q.to(torch.uint8).reshape(out, inputs)), scale, low


def dequantize_int4(packed: torch.Tensor, scales: torch.Tensor, lows: torch.Tensor) -> torch.Tensor:
    q = unpack_int4(packed).float()
    out, groups = scales.shape
    grouped = q.reshape(out, groups, -1) * scales.float()[..., None] + lows.float()[..., None]
    return grouped.reshape(out, -1)


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """uint8 `[..., 2n]` with values in [0, 15] -> uint8 `[..., n]`, two per byte."""
    if values.shape[-1] % 2:
        raise ValueError(f"int4 packing needs an even last dim, got {values.shape[-1]}")
    if values.numel() and int(values.max()) > 15:
        raise ValueError("int4 values must lie in [0, 15]")
    v = values.to(torch.uint8)
    return v[..., 0::2] | (v[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_int4`: uint8 `[..., n]` -> uint8 `[..., 2n]`."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)


def _check_matrix(weight: torch.Tensor) -> None:
    if weight.ndim != 2:
        raise ValueError(f"weight-only quantization takes 2-D weights, got {list(weight.shape)}")
    if not weight.is_floating_point():
        raise ValueError(f"weights must be floating point, got {weight.dtype}")
    if not torch.isfinite(weight).all():
        raise ValueError("weights hold inf or nan: nothing to quantize")


_FP16_SMALLEST = 2.0**-24  # the smallest fp16 subnormal


def _fp16_toward(x: torch.Tensor, *, down: bool) -> torch.Tensor:
    """`x` as fp16, rounded toward -inf (`down`) or +inf, so the fp16 value bounds `x`."""
    rounded = x.to(torch.float16)
    off = rounded.float() > x if down else rounded.float() < x
    target = torch.full_like(rounded, float("-inf") if down else float("inf"))
    return torch.where(off, torch.nextafter(rounded, target), rounded)
