"""A small class-conditional U-Net that predicts the noise of a DDPM, as pure functions.

    params = init(cfg, seed=0)
    eps = apply(params, {"images": x_t, "t": t, "labels": labels}, cfg)   # eps: like x_t

The timestep goes through sinusoidal features and a two-layer SiLU MLP; a class embedding of
`num_classes + 1` rows (the last one: no label, the unconditional input of classifier-free
guidance) is added to it. The image path: a 3x3 stem conv, then per level `blocks_per_level`
residual blocks (GN, SiLU, conv, + the embedding's per-channel shift, GN, SiLU, dropout, conv,
a 1x1 skip conv when the width changes) and a stride-2 conv down; a middle of two residual
blocks (with self-attention between them when `attention`) at the lowest resolution; on the way
up each level concatenates the output its down path saved, runs its blocks and goes up by a
nearest 2x upsample and a conv to the width of the level above. A final GN, SiLU and conv start
at zero, so a fresh model predicts zero noise. Group norm, never batch norm: a row's output
depends on that row alone. Params load 1:1 into `nn.Conv2d`, `nn.GroupNorm`, `nn.Linear`,
`nn.Embedding` (see `benchmarks/baseline_unet.py`).

The defaults are the MNIST diffusion net (0.23M parameters, `gin/models/unet.gin`). In a check
with 3000 steps of 128 (linear schedule, T = 1000, labels dropped 10 %, EMA; DDIM 50 steps), the
MNIST CNN judged 98 % of its guided samples (w = 2) the right class, 97 % after 2000 steps. It
spends its compute at full resolution, which the samples needed: a 2x2 pixel-unshuffle stem
(the net on 14x14 maps, twice as wide) ran 1.3x faster per image but reached 50 % after 1500
steps, against 82 % for this net.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from craft.config import configurable
from craft.models.spec import ModelSpec, check_images
from craft.nn import (
    conv2d,
    dropout,
    embedding,
    fold_in,
    group_norm,
    init_conv2d,
    init_embedding,
    init_group_norm,
    init_linear,
    linear,
)
from craft.tree import Params

INPUTS = ("images", "t", "labels")


@configurable
class UNetConfig(BaseModel):
    """The shape of a U-Net noise predictor. `num_classes` None means: take it from the data."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    num_classes: int | None = Field(None, gt=0)
    """Classes of the labels; the embedding has one more row, the id `num_classes` = no label."""
    in_channels: int = Field(1, gt=0)
    image_size: int = Field(28, gt=0)
    """Height and width of the (square) images."""
    channels: int = Field(16, gt=0)
    """Width of the stem conv; level i is `channels * channel_mults[i]` wide."""
    channel_mults: tuple[int, ...] = Field((1, 2, 2), min_length=1)
    """One entry per resolution level; each level but the last halves the size (28, 14, 7)."""
    blocks_per_level: int = Field(1, gt=0)
    """Residual blocks per level on the way down (and again on the way up)."""
    attention: bool = False
    """Self-attention over the positions of the lowest resolution, between the middle blocks."""
    heads: int = Field(4, gt=0)
    """Attention heads (must divide the lowest level's width)."""
    groups: int = Field(4, gt=0)
    """Group norm groups (must divide `channels` and every level's width)."""
    time_dim: int = Field(128, gt=0)
    """Width of the time and class embedding (even: half sines, half cosines)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Inside each residual block, before its second conv."""

    @model_validator(mode="after")
    def _shapes_fit(self) -> UNetConfig:
        if any(m <= 0 for m in self.channel_mults):
            raise ValueError(f"channel_mults={self.channel_mults} must all be positive")
        halvings = len(self.channel_mults) - 1
        if self.image_size % 2**halvings:
            raise ValueError(
                f"image_size={self.image_size} must divide by 2**{halvings} = {2**halvings}: "
                f"{len(self.channel_mults)} levels halve it {halvings} times"
            )
        widths = (self.channels, *self.widths)
        if any(w % self.groups for w in widths):
            raise ValueError(
                f"groups={self.groups} must divide channels={self.channels} and every level's "
                f"width {self.widths}"
            )
        if self.time_dim % 2:
            raise ValueError(f"time_dim={self.time_dim} must be even (half sines, half cosines)")
        if self.attention and self.widths[-1] % self.heads:
            raise ValueError(
                f"heads={self.heads} must divide the lowest level's width {self.widths[-1]}"
            )
        return self

    @property
    def widths(self) -> tuple[int, ...]:
        """Each level's width."""
        return tuple(self.channels * m for m in self.channel_mults)

    def classes(self) -> int:
        if self.num_classes is None:
            raise ValueError("UNetConfig.num_classes is not set (it comes from the dataset)")
        return self.num_classes


# -- the layout: which residual blocks there are, read by init, param_count and flops -------


def _down_blocks(cfg: UNetConfig) -> list[list[tuple[int, int]]]:
    """(in, out) widths of each level's blocks on the way down."""
    levels, c = [], cfg.channels
    for width in cfg.widths:
        levels.append([(c if b == 0 else width, width) for b in range(cfg.blocks_per_level)])
        c = width
    return levels


def _up_blocks(cfg: UNetConfig) -> list[list[tuple[int, int]]]:
    """(in, out) widths of each level's blocks on the way up, lowest level first: the first
    block of a level reads what comes from below (as wide as the level) and the saved output
    of that level's down path."""
    blocks = range(cfg.blocks_per_level)
    return [[(2 * width if b == 0 else width, width) for b in blocks] for width in cfg.widths[::-1]]


def _block_count(cfg: UNetConfig) -> int:
    return 2 * len(cfg.widths) * cfg.blocks_per_level + 2


# -- init -------------------------------------------------------------------------------------


def init(cfg: UNetConfig, *, seed: int) -> Params:
    """He-normal convs (a SiLU precedes each), LeCun-normal linears, a unit-normal class table,
    zero biases, unit group-norm scales; the last conv and the attention output are zero, so
    a fresh model predicts 0 and its attention starts as the identity."""
    generator = torch.Generator().manual_seed(seed)
    d = cfg.time_dim
    params: Params = {
        "time": {
            "fc1": init_linear(d, d, generator, std=1 / math.sqrt(d)),
            "fc2": init_linear(d, d, generator, std=1 / math.sqrt(d)),
        },
        "labels": init_embedding(cfg.classes() + 1, d, generator, std=1.0),
        "stem": init_conv2d(cfg.in_channels, cfg.channels, 3, generator),
    }
    last = len(cfg.widths) - 1
    down: list[Params] = []
    for index, pairs in enumerate(_down_blocks(cfg)):
        level: Params = {"blocks": [_init_block(i, o, d, generator) for i, o in pairs]}
        if index < last:
            width = pairs[-1][1]
            level["down"] = init_conv2d(width, width, 3, generator)
        down.append(level)
    params["down"] = down
    low = cfg.widths[-1]
    middle: Params = {"block1": _init_block(low, low, d, generator)}
    if cfg.attention:
        middle["attn"] = {
            "norm": init_group_norm(low),
            "qkv": init_linear(low, 3 * low, generator, std=1 / math.sqrt(low)),
            "proj": {"w": torch.zeros(low, low), "b": torch.zeros(low)},
        }
    middle["block2"] = _init_block(low, low, d, generator)
    params["middle"] = middle
    up: list[Params] = []
    for index, pairs in enumerate(_up_blocks(cfg)):
        level = {"blocks": [_init_block(i, o, d, generator) for i, o in pairs]}
        if index < last:
            level["up"] = init_conv2d(pairs[-1][1], cfg.widths[last - index - 1], 3, generator)
        up.append(level)
    params["up"] = up
    params["out"] = {
        "norm": init_group_norm(cfg.widths[0]),
        "conv": {
            "w": torch.zeros(cfg.in_channels, cfg.widths[0], 3, 3),
            "b": torch.zeros(cfg.in_channels),
        },
    }
    return params


def _init_block(c_in: int, c_out: int, d: int, generator: torch.Generator) -> Params:
    block: Params = {
        "norm1": init_group_norm(c_in),
        "conv1": init_conv2d(c_in, c_out, 3, generator),
        "emb": init_linear(d, c_out, generator, std=1 / math.sqrt(d)),
        "norm2": init_group_norm(c_out),
        "conv2": init_conv2d(c_out, c_out, 3, generator),
    }
    if c_in != c_out:
        block["skip"] = init_conv2d(c_in, c_out, 1, generator)
    return block


# -- apply ------------------------------------------------------------------------------------


def apply(
    params: Params,
    inputs: dict[str, torch.Tensor],
    cfg: UNetConfig,
    *,
    rng: torch.Tensor | None = None,
) -> torch.Tensor:
    """The predicted noise, shaped like `inputs["images"]` (`[B, C, H, W]`, the noised x_t),
    for timesteps `inputs["t"]` and class ids `inputs["labels"]` (int64 `[B]`; the id
    `num_classes` is no label). `rng` (a key, or `[B]` keys, one per row) turns dropout on."""
    images, t, labels = check_inputs(inputs, cfg)
    emb = linear(params["time"]["fc1"], timestep_features(t, cfg.time_dim))
    emb = linear(params["time"]["fc2"], F.silu(emb))
    # Every block reads SiLU(emb): computed once here instead of once per block.
    emb = F.silu(emb + embedding(params["labels"], labels))
    keys = _dropout_keys(rng, cfg)
    site = iter(range(_block_count(cfg)))

    def block(p: Params, x: torch.Tensor) -> torch.Tensor:
        k = None if keys is None else keys[next(site)]
        return _block(p, x, emb, cfg, k)

    x = conv2d(params["stem"], images)
    saved = []
    for level in params["down"]:
        for p in level["blocks"]:
            x = block(p, x)
        saved.append(x)
        if "down" in level:
            x = conv2d(level["down"], x, stride=2)
    middle = params["middle"]
    x = block(middle["block1"], x)
    if "attn" in middle:
        x = x + _attention(middle["attn"], x, cfg)
    x = block(middle["block2"], x)
    for level in params["up"]:
        x = torch.cat([x, saved.pop()], dim=1)
        for p in level["blocks"]:
            x = block(p, x)
        if "up" in level:
            x = conv2d(level["up"], F.interpolate(x, scale_factor=2.0, mode="nearest"))
    out = params["out"]
    return conv2d(out["conv"], F.silu(group_norm(out["norm"], x, cfg.groups)))


def _block(
    p: Params, x: torch.Tensor, emb: torch.Tensor, cfg: UNetConfig, key: torch.Tensor | None
) -> torch.Tensor:
    h = conv2d(p["conv1"], F.silu(group_norm(p["norm1"], x, cfg.groups)))
    h = h + linear(p["emb"], emb)[:, :, None, None]
    h = dropout(F.silu(group_norm(p["norm2"], h, cfg.groups)), cfg.dropout, key)
    h = conv2d(p["conv2"], h)
    return (conv2d(p["skip"], x) if "skip" in p else x) + h


def _attention(p: Params, x: torch.Tensor, cfg: UNetConfig) -> torch.Tensor:
    """Multi-head self-attention over all positions (no mask); `[B, C, H, W]` in and out."""
    batch, c, height, width = x.shape
    tokens = group_norm(p["norm"], x, cfg.groups).flatten(2).transpose(1, 2)  # [B, HW, C]
    qkv = linear(p["qkv"], tokens).view(batch, height * width, 3, cfg.heads, c // cfg.heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, -1, c)
    return linear(p["proj"], y).transpose(1, 2).reshape(batch, c, height, width)


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """`[B]` timesteps -> `[B, dim]`: sines then cosines of t at `dim / 2` geometrically spaced
    frequencies from 1 to 1 / max_period (the Transformer's positions, as DDPM uses them)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    angles = t.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def check_inputs(
    inputs: dict[str, torch.Tensor], cfg: UNetConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Refuse inputs that are not `{"images": [B, C, H, W], "t": int64 [B], "labels": int64
    [B]}`, naming what does not fit. Shapes and dtypes only: a range check on the values would
    read them (a graph break under `torch.compile`); an out-of-range label fails in the lookup."""
    if not isinstance(inputs, dict) or set(inputs) != set(INPUTS):
        got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
        raise ValueError(f"the U-Net takes a dict with keys {list(INPUTS)}, got {got}")
    images, t, labels = (inputs[name] for name in INPUTS)
    check_images(images, cfg.in_channels, cfg.image_size)
    for name, value in (("t", t), ("labels", labels)):
        if value.dtype != torch.int64 or tuple(value.shape) != (images.shape[0],):
            raise ValueError(
                f"{name} must be int64 of shape [B] = ({images.shape[0]},) like the images, got "
                f"{value.dtype} of shape {tuple(value.shape)}"
            )
    return images, t, labels


def _dropout_keys(rng: torch.Tensor | None, cfg: UNetConfig) -> torch.Tensor | None:
    """Keys of every residual block, `[blocks]` or `[blocks, B]`, in one vectorized fold_in."""
    if rng is None or cfg.dropout == 0.0:
        return None
    sites = torch.arange(_block_count(cfg), device=rng.device)
    return fold_in(rng, sites.view(-1, *[1] * rng.ndim))


# -- counts -----------------------------------------------------------------------------------


def param_count(cfg: UNetConfig) -> int:
    """The number of parameters `init(cfg)` makes, without making them (arithmetic only, so a
    config that claims a huge model is caught before anything is allocated)."""
    d, low = cfg.time_dim, cfg.widths[-1]
    total = 2 * (d * d + d) + (cfg.classes() + 1) * d + _conv(cfg.in_channels, cfg.channels, 3)
    for pairs in _down_blocks(cfg) + _up_blocks(cfg):
        total += sum(_block_params(i, o, d) for i, o in pairs)
    # A 3x3 conv per level change: down keeps the width, up takes the width of the level above.
    for above, below in zip(cfg.widths, cfg.widths[1:], strict=False):
        total += _conv(above, above, 3) + _conv(below, above, 3)
    total += 2 * _block_params(low, low, d)
    if cfg.attention:
        total += 2 * low + (3 * low * low + 3 * low) + (low * low + low)
    return total + 2 * cfg.widths[0] + _conv(cfg.widths[0], cfg.in_channels, 3)


def _conv(c_in: int, c_out: int, kernel: int) -> int:
    return c_out * c_in * kernel * kernel + c_out


def _block_params(c_in: int, c_out: int, d: int) -> int:
    total = 2 * c_in + _conv(c_in, c_out, 3) + d * c_out + c_out + 2 * c_out
    total += _conv(c_out, c_out, 3)
    return total + (_conv(c_in, c_out, 1) if c_in != c_out else 0)


def flops_per_example(cfg: UNetConfig, shape: tuple[int, ...]) -> float:
    """Training FLOPs for one `(C, H, W)` image: 3 x (2 x the multiply-adds of the convs, the
    linear layers and the attention's two matmuls); norms, SiLUs, biases and the embedding
    lookup are left out (a few percent at most)."""
    channels, size, _ = shape
    d = cfg.time_dim
    macs = 2 * d * d + size * size * cfg.channels * channels * 9
    sizes = [size >> level for level in range(len(cfg.widths))]
    for pairs, side in zip(_down_blocks(cfg), sizes, strict=True):
        macs += sum(_block_macs(i, o, d, side) for i, o in pairs)
    for pairs, side in zip(_up_blocks(cfg), reversed(sizes), strict=True):
        macs += sum(_block_macs(i, o, d, side) for i, o in pairs)
    for level in range(1, len(sizes)):
        above, below, side = cfg.widths[level - 1], cfg.widths[level], sizes[level]
        macs += side * side * above * above * 9  # down into this level (stride 2: its size)
        macs += (2 * side) ** 2 * below * above * 9  # up out of it (after the 2x upsample)
    low, side = cfg.widths[-1], sizes[-1]
    macs += 2 * _block_macs(low, low, d, side)
    if cfg.attention:
        positions = side * side
        macs += positions * 4 * low * low + 2 * positions * positions * low
    return 6.0 * (macs + size * size * cfg.widths[0] * channels * 9)


def _block_macs(c_in: int, c_out: int, d: int, side: int) -> int:
    pixels = side * side
    macs = pixels * (c_in * c_out * 9 + c_out * c_out * 9) + d * c_out
    return macs + (pixels * c_in * c_out if c_in != c_out else 0)


SPEC = ModelSpec(
    name="unet",
    config=UNetConfig,
    init=init,
    apply=apply,
    param_count=param_count,
    inputs="noisy_images",
    flops_per_example=flops_per_example,
    data_fields=("num_classes",),
)
