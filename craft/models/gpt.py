"""A decoder-only transformer (GPT) as pure functions over a params tree.

params = init(cfg, seed=0)
logits = apply(params, tokens, cfg)                  # [B, T] -> [B, T, vocab]
loss, aux = loss(params, {"inputs": x, "targets": y}, cfg, rng=key)
cache = init_cache(cfg, batch=1); logits = decode_step(params, cache, tokens, pos, cfg)
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.utils.checkpoint import checkpoint

from craft.config import configurable
from craft.models.gpt_memory import activation_bytes
from craft.models.spec import ModelSpec
from craft.nn import (
    cached_self_attention,
    causal_self_attention,
    dropout,
    embedding,
    fold_in,
    init_attention,
    init_embedding,
    init_layer_norm,
    init_mlp,
    init_rms_norm,
    layer_norm,
    mlp,
    next_token_loss,
    rms_norm,
    rotary_tables,
)
from craft.nn.region import region
from craft.tree import Params


@configurable
class GPTConfig(BaseModel):
    """The shape of a GPT. `vocab_size` None means: take it from the dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    vocab_size: int | None = Field(None, gt=0)
    block_size: int = Field(256, gt=0)
    """The longest context the model accepts (learned position table size)."""
    n_layer: int = Field(4, gt=0)
    n_head: int = Field(4, gt=0)
    n_embd: int = Field(128, gt=0)
    head_size: int | None = Field(None, gt=0)
    """Width of each attention head; None: n_embd / n_head. Set when heads are pruned away
    (the others keep their width)."""
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    bias: bool = True
    tie_embeddings: bool = True
    positions: Literal["learned", "rotary"] = "learned"
    norm: Literal["layer", "rms"] = "layer"
    activation: Literal["gelu_tanh", "gelu", "relu"] = "gelu_tanh"
    """The MLP's nonlinearity: GELU's tanh approximation (GPT-2's), exact GELU, or ReLU."""
    remat: bool = False
    """Activation checkpointing per block: recompute activations in backward to save memory."""

    @model_validator(mode="after")
    def _heads_divide_width(self) -> GPTConfig:
        if self.head_size is None and self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}")
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError("rotary positions need an even head size (n_embd / n_head)")
        return self

    @property
    def head_dim(self) -> int:
        return self.head_size or self.n_embd // self.n_head

    @property
    def attn_width(self) -> int:
        """The heads' total width: n_embd, unless heads were pruned."""
        return self.n_head * self.head_dim

    @property
    def mlp_hidden(self) -> int:
        return int(self.mlp_ratio * self.n_embd)

    def vocab(self) -> int:
        if self.vocab_size is None:
            raise ValueError("GPTConfig.vocab_size is not set (it comes from the dataset)")
        return self.vocab_size


def init(cfg: GPTConfig, *, seed: int) -> Params:
    """Fresh params: N(0, 0.02) weights, residual projections scaled by 1/sqrt(2 * n_layer)."""
    generator = torch.Generator().manual_seed(seed)
    out_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    params: Params = {"tok": init_embedding(cfg.vocab(), cfg.n_embd, generator)}
    if cfg.positions == "learned":
        params["pos"] = init_embedding(cfg.block_size, cfg.n_embd, generator)
    params["blocks"] = [
        {
            "ln1": _init_norm(cfg),
            "attn": init_attention(
                cfg.n_embd, generator, bias=cfg.bias, out_std=out_std, width=cfg.attn_width
            ),
            "ln2": _init_norm(cfg),
            "mlp": init_mlp(cfg.n_embd, cfg.mlp_hidden, generator, bias=cfg.bias, out_std=out_std),
        }
        for _ in range(cfg.n_layer)
    ]
    params["ln_f"] = _init_norm(cfg)
    if not cfg.tie_embeddings:
        params["head"] = {"w": torch.randn(cfg.vocab(), cfg.n_embd, generator=generator) * 0.02}
    return params


def param_count(cfg: GPTConfig) -> int:
    """The number of parameters `init(cfg)` makes, without making them."""
    d, v, h, a = cfg.n_embd, cfg.vocab(), cfg.mlp_hidden, cfg.attn_width
    norm = 2 * d if cfg.norm == "layer" and cfg.bias else d
    bias = cfg.bias
    attn = d * 3 * a + a * d + (3 * a + d if bias else 0)
    mlp_ = 2 * d * h + ((h + d) if bias else 0)
    total = v * d + cfg.n_layer * (attn + mlp_ + 2 * norm) + norm
    total += cfg.block_size * d if cfg.positions == "learned" else 0
    total += 0 if cfg.tie_embeddings else v * d
    return total


def apply(
    params: Params, tokens: torch.Tensor, cfg: GPTConfig, *, rng: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits `[B, T, vocab]` for `tokens` `[B, T]`; `rng` turns dropout on: a key, or `[B]`
    keys, one per row (the train step's, so a row's masks do not depend on its batch)."""
    length = tokens.shape[1]
    if length > cfg.block_size:
        raise ValueError(f"sequence length {length} exceeds block_size {cfg.block_size}")
    x = embedding(params["tok"], tokens)
    if cfg.positions == "learned":
        x = x + params["pos"]["embedding"][:length]
    rotary = _rotary(cfg, length, tokens.device)
    keys = _dropout_keys(rng, cfg)
    x = dropout(x, cfg.dropout, None if keys is None else keys[0])
    for index, block in enumerate(params["blocks"]):
        pair = None if keys is None else keys[2 * index + 1 : 2 * index + 3]
        if cfg.remat:
            x = checkpoint(_block, block, x, cfg, rotary, pair, use_reentrant=False)
        else:
            x = _block(block, x, cfg, rotary, pair)
    return _logits(params, x, cfg)


def loss(
    params: Params,
    batch: dict[str, torch.Tensor],
    cfg: GPTConfig,
    *,
    rng: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean next-token cross-entropy over targets >= 0; aux holds the token count."""
    return next_token_loss(apply(params, batch["inputs"], cfg, rng=rng), batch["targets"])


def init_cache(
    cfg: GPTConfig,
    batch: int,
    *,
    max_len: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> list[dict[str, torch.Tensor]]:
    """An empty key/value cache: per layer `k`, `v` of `[batch, n_head, max_len, head_dim]`."""
    shape = (batch, cfg.n_head, max_len or cfg.block_size, cfg.head_dim)
    return [
        {
            "k": torch.zeros(shape, dtype=dtype, device=device),
            "v": torch.zeros(shape, dtype=dtype, device=device),
        }
        for _ in range(cfg.n_layer)
    ]


def decode_step(
    params: Params,
    cache: list[dict[str, torch.Tensor]],
    tokens: torch.Tensor,
    pos: torch.Tensor,
    cfg: GPTConfig,
    *,
    filled: int | None = None,
) -> torch.Tensor:
    """Logits for `tokens` `[B, t]` placed at positions `pos .. pos+t-1` (`pos`: 0-d int64).

    The cache is consumed: it is updated in place with the new keys and values, so a caller
    keeps one copy of it. Use it for the prompt (t > 1) and then one token at a time. An eager
    caller passes `filled` = pos + t so attention reads only the filled part of the cache.
    """
    length = tokens.shape[1]
    positions = pos + torch.arange(length, device=tokens.device)
    x = embedding(params["tok"], tokens)
    if cfg.positions == "learned":
        x = x + params["pos"]["embedding"][positions]
    rotary = _rotary(cfg, cache[0]["k"].shape[2], tokens.device)
    for block, layer_cache in zip(params["blocks"], cache, strict=True):
        h = _norm(cfg, block["ln1"], x)
        x = x + cached_self_attention(
            block["attn"], h, cfg.n_head, layer_cache, pos, rotary=rotary, filled=filled
        )
        x = x + mlp(block["mlp"], _norm(cfg, block["ln2"], x), cfg.activation)
    return _logits(params, x, cfg)


@region  # compiled once and reused by every layer (the step's regional compilation)
def _block(
    block: Params,
    x: torch.Tensor,
    cfg: GPTConfig,
    rotary: tuple[torch.Tensor, torch.Tensor] | None,
    keys: torch.Tensor | None,
) -> torch.Tensor:
    attn = causal_self_attention(
        block["attn"], _norm(cfg, block["ln1"], x), cfg.n_head, rotary=rotary
    )
    attn_key, mlp_key = (None, None) if keys is None else (keys[0], keys[1])
    x = x + dropout(attn, cfg.dropout, attn_key)
    hidden = mlp(block["mlp"], _norm(cfg, block["ln2"], x), cfg.activation)
    return x + dropout(hidden, cfg.dropout, mlp_key)


def _logits(params: Params, x: torch.Tensor, cfg: GPTConfig) -> torch.Tensor:
    x = _norm(cfg, params["ln_f"], x)
    head = params["tok"]["embedding"] if cfg.tie_embeddings else params["head"]["w"]
    return F.linear(x, head)


def _init_norm(cfg: GPTConfig) -> Params:
    return (
        init_layer_norm(cfg.n_embd, bias=cfg.bias)
        if cfg.norm == "layer"
        else init_rms_norm(cfg.n_embd)
    )


def _norm(cfg: GPTConfig, params: Params, x: torch.Tensor) -> torch.Tensor:
    return layer_norm(params, x) if cfg.norm == "layer" else rms_norm(params, x)


def _rotary(
    cfg: GPTConfig, length: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    return rotary_tables(cfg.head_dim, length, device=device) if cfg.positions == "rotary" else None


def _dropout_keys(rng: torch.Tensor | None, cfg: GPTConfig) -> torch.Tensor | None:
    """Keys per dropout site (embeddings, then attention and MLP of each block), `[sites]` or
    `[sites, B]` for per-row keys, derived in one vectorized step: a scalar key chain per site
    made inductor's CPU compile 4x slower."""
    if rng is None or cfg.dropout == 0.0:
        return None
    sites = torch.arange(1 + 2 * cfg.n_layer, device=rng.device)
    return fold_in(rng, sites.view(-1, *[1] * rng.ndim))


def flops_per_example(cfg: GPTConfig, shape: tuple[int, ...]) -> float:
    """Training FLOPs for one sequence of `shape = (T,)`: 6N + 12·L·d·T per token (d: the
    heads' width)."""
    (length,) = shape
    return float(length * (6 * param_count(cfg) + 12 * cfg.n_layer * cfg.attn_width * length))


def shrink(
    params: Params, cfg: GPTConfig, *, mlp: float = 0.0, heads: int = 0
) -> tuple[Params, GPTConfig]:
    """Structured pruning: a smaller dense GPT without, in every block, the `mlp` share of MLP
    neurons and the `heads` attention heads that weigh least (a neuron: |fc row| * |proj
    column|; a head: |its q, k, v rows| * |its proj columns|). The result computes what the
    original computes with those neurons' and heads' weights set to zero."""
    keep_neurons = cfg.mlp_hidden - round(mlp * cfg.mlp_hidden)
    if not 0 < keep_neurons <= cfg.mlp_hidden or not 0 <= heads < cfg.n_head:
        raise ValueError(
            f"keep at least one MLP neuron of {cfg.mlp_hidden} and one head of {cfg.n_head} "
            f"(asked to prune {mlp:.0%} of the neurons and {heads} heads)"
        )
    blocks = []
    for block in params["blocks"]:
        fc, proj = block["mlp"]["fc"], block["mlp"]["proj"]
        score = fc["w"].norm(dim=1) * proj["w"].norm(dim=0)
        kept = score.argsort(descending=True, stable=True)[:keep_neurons].sort().values
        new_mlp = {"fc": _rows(fc, kept), "proj": _columns(proj, kept)}
        attn = block["attn"]
        if heads:
            attn = _keep_heads(attn, cfg, cfg.n_head - heads)
        blocks.append({**block, "attn": attn, "mlp": new_mlp})
    ratio = keep_neurons / cfg.n_embd
    if int(ratio * cfg.n_embd) != keep_neurons:  # a ratio that rounds back to the width
        ratio = (keep_neurons + 0.5) / cfg.n_embd
    update: dict[str, object] = {"mlp_ratio": ratio}
    if heads:
        update.update(n_head=cfg.n_head - heads, head_size=cfg.head_dim)
    return {**params, "blocks": blocks}, cfg.model_copy(update=update)


def _keep_heads(attn: Params, cfg: GPTConfig, count: int) -> Params:
    """The attention params of the `count` heads that weigh most, in their order."""
    width, size = cfg.attn_width, cfg.head_dim
    qkv = attn["qkv"]["w"].view(3, cfg.n_head, size, -1)
    proj = attn["proj"]["w"].view(-1, cfg.n_head, size)
    norm = torch.linalg.vector_norm
    score = norm(qkv, dim=(0, 2, 3)) * norm(proj, dim=(0, 2))
    kept = score.argsort(descending=True, stable=True)[:count].sort().values
    rows = (torch.arange(3)[:, None, None] * width + kept[None, :, None] * size
            + torch.arange(size)[None, None, :]).flatten()  # fmt: skip
    columns = (kept[:, None] * size + torch.arange(size)[None, :]).flatten()
    return {"qkv": _rows(attn["qkv"], rows), "proj": _columns(attn["proj"], columns)}


def _rows(linear: Params, index: torch.Tensor) -> Params:
    """A linear layer keeping the outputs `index`."""
    return {name: value[index].clone() for name, value in linear.items()}


def _columns(linear: Params, index: torch.Tensor) -> Params:
    """A linear layer keeping the inputs `index` (its bias is the outputs': kept whole)."""
    kept = {"w": linear["w"][:, index].clone()}
    return kept | ({"b": linear["b"].clone()} if "b" in linear else {})


SPEC = ModelSpec(
    name="gpt",
    config=GPTConfig,
    init=init,
    apply=apply,
    param_count=param_count,
    inputs="tokens",
    flops_per_example=flops_per_example,
    data_fields=("vocab_size",),
    context=lambda cfg: cfg.block_size,
    shrink=shrink,
    activation_bytes=activation_bytes,
)
