"""Causal self-attention through `scaled_dot_product_attention`, with optional rotary positions
and a key/value cache for decoding."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from craft.nn.layers import init_linear, linear
from craft.tree import Params


def init_attention(
    dim: int, generator: torch.Generator, *, bias: bool, out_std: float, width: int | None = None
) -> Params:
    """q, k, v and output projections; `width`: the heads' total width (default `dim`)."""
    width = width or dim
    return {
        "qkv": init_linear(dim, 3 * width, generator, bias=bias),
        "proj": init_linear(width, dim, generator, bias=bias, std=out_std),
    }


def rotary_tables(
    head_dim: int, length: int, base: float = 10000.0, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, `[length, head_dim // 2]`, for rotary position embeddings."""
    inv_freq = base ** (
        -torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    )
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the last dim of `x`: `[B, H, T, D]`."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def causal_self_attention(
    params: Params,
    x: torch.Tensor,
    n_head: int,
    *,
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """`x`: `[B, T, D]` -> `[B, T, D]`; `rotary`: cos/sin tables for positions 0..T-1.

    No dropout on the attention weights: SDPA would draw it from the global generator, and Craft's
    randomness comes from explicit keys (models drop out on the residual branches instead)."""
    batch, length, _ = x.shape
    q, k, v = _heads(linear(params["qkv"], x), n_head)
    if rotary is not None:
        cos, sin = rotary[0][:length], rotary[1][:length]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return linear(params["proj"], y.transpose(1, 2).reshape(batch, length, -1))


def cached_self_attention(
    params: Params,
    x: torch.Tensor,
    n_head: int,
    cache: dict[str, torch.Tensor],
    pos: torch.Tensor,
    *,
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    filled: int | None = None,
) -> torch.Tensor:
    """Attention for new tokens `x` (`[B, t, D]`) at positions `pos .. pos+t-1`.

    Their keys and values are written into `cache` (`k`, `v`: `[B, H, max_len, Dh]`) in place;
    queries see every cached position up to their own. With `filled` (= pos + t, known to an
    eager caller) only the filled slots are read; without it the shapes stay static, so a
    compiled caller compiles once.
    """
    batch, length, _ = x.shape
    q, k, v = _heads(linear(params["qkv"], x), n_head)
    positions = pos + torch.arange(length, device=x.device)
    if rotary is not None:
        cos, sin = rotary[0][positions], rotary[1][positions]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    cache["k"].index_copy_(2, positions, k.to(cache["k"].dtype))
    cache["v"].index_copy_(2, positions, v.to(cache["v"].dtype))
    keys, values = cache["k"], cache["v"]
    if filled is None:  # static shapes: mask the slots past each query's position
        visible = torch.arange(keys.shape[2], device=x.device)[None, :] <= positions[:, None]
        y = F.scaled_dot_product_attention(
            q, keys.to(q.dtype), values.to(q.dtype), attn_mask=visible
        )
    else:
        # Only the filled slots: one new token sees them all, and a prompt that fills the
        # cache from 0 (filled == t) is plain causal attention. Neither needs a mask.
        keys, values = keys[:, :, :filled].to(q.dtype), values[:, :, :filled].to(q.dtype)
        if length not in (1, filled):
            visible = torch.arange(filled, device=x.device)[None, :] <= positions[:, None]
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible)
        else:
            y = F.scaled_dot_product_attention(q, keys, values, is_causal=length > 1)
    return linear(params["proj"], y.transpose(1, 2).reshape(batch, length, -1))


def _heads(qkv: torch.Tensor, n_head: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, length, three_dim = qkv.shape
    head_dim = three_dim // (3 * n_head)
    qkv = qkv.view(batch, length, 3, n_head, head_dim).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]
