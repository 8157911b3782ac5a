"""The conventional baseline: the U-Net of `craft.models.unet` as PyTorch modules.

For a diffusion benchmark (with `torch.optim.AdamW` and `torch.compile(model)`) and for the
tests as a reference; `baseline_unet` loads a Craft params tree. The modules are named like the
params tree, so a param's dotted name maps onto the state dict by its last part alone (`w` ->
`weight`...), except the attention, which is a stock `nn.MultiheadAttention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from craft import tree
from craft.models.unet import UNetConfig
from craft.tree import Params

_LEAVES = {"w": "weight", "b": "bias", "scale": "weight", "bias": "bias", "embedding": "weight"}
_ATTENTION = {
    "qkv.w": "mha.in_proj_weight",
    "qkv.b": "mha.in_proj_bias",
    "proj.w": "mha.out_proj.weight",
    "proj.b": "mha.out_proj.bias",
}


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, cfg: UNetConfig) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(cfg.groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(cfg.time_dim, c_out)
        self.norm2 = nn.GroupNorm(cfg.groups, c_out)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, width: int, cfg: UNetConfig) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(cfg.groups, width)
        self.mha = nn.MultiheadAttention(width, cfg.heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        y, _ = self.mha(tokens, tokens, tokens, need_weights=False)
        return x + y.transpose(1, 2).reshape(b, c, h, w)


class DownLevel(nn.Module):
    def __init__(self, blocks: list[ResBlock], down: nn.Conv2d | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.down = down

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the up path reads back, what goes on down)."""
        for block in self.blocks:
            x = block(x, emb)
        return x, x if self.down is None else self.down(x)


class UpLevel(nn.Module):
    def __init__(self, blocks: list[ResBlock], up: nn.Conv2d | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.up = up

    def forward(self, x: torch.Tensor, saved: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, saved], dim=1)
        for block in self.blocks:
            x = block(x, emb)
        if self.up is not None:
            x = self.up(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class Middle(nn.Module):
    def __init__(self, width: int, cfg: UNetConfig) -> None:
        super().__init__()
        self.block1 = ResBlock(width, width, cfg)
        self.attn = Attention(width, cfg) if cfg.attention else None
        self.block2 = ResBlock(width, width, cfg)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.block1(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        return self.block2(x, emb)


class UNet(nn.Module):
    """`forward(images, t, labels)` -> the predicted noise, shaped like `images`."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.time_dim = cfg.time_dim
        d, widths, last, blocks = (
            cfg.time_dim,
            cfg.widths,
            len(cfg.widths) - 1,
            cfg.blocks_per_level,
        )
        self.time = nn.ModuleDict({"fc1": nn.Linear(d, d), "fc2": nn.Linear(d, d)})
        self.labels = nn.Embedding(cfg.classes() + 1, d)
        self.stem = nn.Conv2d(cfg.in_channels, cfg.channels, 3, padding=1)
        self.down = nn.ModuleList()
        c = cfg.channels
        for index, width in enumerate(widths):
            level = [ResBlock(c if b == 0 else width, width, cfg) for b in range(blocks)]
            down = nn.Conv2d(width, width, 3, stride=2, padding=1) if index < last else None
            self.down.append(DownLevel(level, down))
            c = width
        self.middle = Middle(c, cfg)
        self.up = nn.ModuleList()
        for index, width in enumerate(reversed(widths)):
            level = [ResBlock(2 * width if b == 0 else width, width, cfg) for b in range(blocks)]
            # After a 2x upsample, to the width of the level above.
            up = nn.Conv2d(width, widths[last - index - 1], 3, padding=1) if index < last else None
            self.up.append(UpLevel(level, up))
        self.out = nn.ModuleDict(
            {
                "norm": nn.GroupNorm(cfg.groups, widths[0]),
                "conv": nn.Conv2d(widths[0], cfg.in_channels, 3, padding=1),
            }
        )

    def forward(self, images: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        half = self.time_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
        angles = t.float()[:, None] * freqs[None, :]
        emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
        emb = self.time["fc2"](F.silu(self.time["fc1"](emb)))
        emb = F.silu(emb + self.labels(labels))
        x = self.stem(images)
        saved = []
        for level in self.down:
            skip, x = level(x, emb)
            saved.append(skip)
        x = self.middle(x, emb)
        for level in self.up:
            x = level(x, saved.pop(), emb)
        return self.out["conv"](F.silu(self.out["norm"](x)))


def baseline_unet(params: Params, cfg: UNetConfig) -> UNet:
    """The same network as `nn.Conv2d`, `nn.GroupNorm`, `nn.Linear`..., loaded with `params`
    (strictly: every param of the module must come from the tree and every leaf must fit)."""
    model = UNet(cfg)
    state: dict[str, torch.Tensor] = {}
    for name, value in tree.to_dotted(params).items():
        if name.startswith("middle.attn.") and name[len("middle.attn.") :] in _ATTENTION:
            state["middle.attn." + _ATTENTION[name[len("middle.attn.") :]]] = value
            continue
        parent, leaf = name.rsplit(".", 1)
        state[f"{parent}.{_LEAVES[leaf]}"] = value
    model.load_state_dict(state)
    return model
