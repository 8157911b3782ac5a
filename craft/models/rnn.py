"""A character-level RNN (Elman, GRU or LSTM) as pure functions over a params tree.

    params = init(cfg, seed=0)
    logits = apply(params, tokens, cfg)                  # [B, T] -> [B, T, vocab]
    loss, aux = loss(params, {"inputs": x, "targets": y}, cfg, rng=key)

Each layer holds `weight_ih` `[G*H, in]`, `weight_hh` `[G*H, H]`, `bias_ih`, `bias_hh` in
PyTorch's layout and gate order (GRU: r, z, n; LSTM: i, f, g, o), so layer `l`'s tensors load into
`nn.RNN` / `nn.GRU` / `nn.LSTM` as `weight_ih_l{l}` and so on.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from craft.config import configurable
from craft.models.spec import ModelSpec
from craft.nn import (
    dropout,
    embedding,
    fold_in,
    init_embedding,
    init_linear,
    linear,
    next_token_loss,
)
from craft.tree import Params

Cell = Literal["elman", "gru", "lstm"]
GATES: dict[str, int] = {"elman": 1, "gru": 3, "lstm": 4}
"""Gate blocks stacked in `weight_ih` / `weight_hh` per cell."""


@configurable
class RNNConfig(BaseModel):
    """The shape of a char-RNN. `vocab_size` None means: take it from the dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    vocab_size: int | None = Field(None, gt=0)
    cell: Cell = "gru"
    """elman (tanh, as nn.RNN), gru (as nn.GRU) or lstm (as nn.LSTM)."""
    n_layer: int = Field(1, gt=0)
    hidden: int = Field(256, gt=0)
    embd: int = Field(64, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    """On the output of every recurrent layer (including the last, before the head)."""

    def vocab(self) -> int:
        if self.vocab_size is None:
            raise ValueError("RNNConfig.vocab_size is not set (it comes from the dataset)")
        return self.vocab_size


def init(cfg: RNNConfig, *, seed: int) -> Params:
    """Fresh params: cells uniform(-1/sqrt(H), 1/sqrt(H)) as PyTorch does, head N(0, 0.02)."""
    generator = torch.Generator().manual_seed(seed)
    h, bound = cfg.hidden, 1.0 / math.sqrt(cfg.hidden)

    def uniform(*shape: int) -> torch.Tensor:
        return torch.empty(shape).uniform_(-bound, bound, generator=generator)

    # Unit-scale embeddings (as nn.Embedding): the cells' 1/sqrt(H) weights expect such inputs.
    params: Params = {"tok": init_embedding(cfg.vocab(), cfg.embd, generator, std=1.0)}
    params["layers"] = []
    for index in range(cfg.n_layer):
        rows, d_in = GATES[cfg.cell] * h, cfg.embd if index == 0 else h
        params["layers"].append(
            {
                "weight_ih": uniform(rows, d_in),
                "weight_hh": uniform(rows, h),
                "bias_ih": uniform(rows),
                "bias_hh": uniform(rows),
            }
        )
    # A small head makes the first logits near zero, so training starts at loss ~ ln(vocab).
    params["head"] = init_linear(h, cfg.vocab(), generator)
    return params


def param_count(cfg: RNNConfig) -> int:
    """The number of parameters `init(cfg)` makes, without making them."""
    v, e, h, g = cfg.vocab(), cfg.embd, cfg.hidden, GATES[cfg.cell]
    layers = sum(g * h * ((e if i == 0 else h) + h + 2) for i in range(cfg.n_layer))
    return v * e + layers + h * v + v


def apply(
    params: Params, tokens: torch.Tensor, cfg: RNNConfig, *, rng: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits `[B, T, vocab]` for `tokens` `[B, T]`, from a zero state; `rng` (a key, or `[B]`
    keys) turns dropout on."""
    x = embedding(params["tok"], tokens)
    for index, layer in enumerate(params["layers"]):
        x = _layer(layer, x, cfg.cell)
        x = dropout(x, cfg.dropout, None if rng is None else fold_in(rng, index))
    return linear(params["head"], x)


def loss(
    params: Params,
    batch: dict[str, torch.Tensor],
    cfg: RNNConfig,
    *,
    rng: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean next-token cross-entropy over targets >= 0; aux holds the token count."""
    return next_token_loss(apply(params, batch["inputs"], cfg, rng=rng), batch["targets"])


def _layer(layer: Params, x: torch.Tensor, cell: Cell) -> torch.Tensor:
    """One recurrent layer over time: `[B, T, in]` -> hidden states `[B, T, H]`."""
    # The input projections do not depend on the state: one matmul for all time steps.
    gx = F.linear(x, layer["weight_ih"], layer["bias_ih"])
    h = x.new_zeros(x.shape[0], layer["weight_hh"].shape[1])
    c = h  # the LSTM's cell state; the other cells ignore it
    outputs = []
    for t in range(x.shape[1]):
        h, c = _cell(cell, gx[:, t], F.linear(h, layer["weight_hh"], layer["bias_hh"]), h, c)
        outputs.append(h)
    return torch.stack(outputs, dim=1)


def _cell(
    cell: Cell, gx: torch.Tensor, gh: torch.Tensor, h: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step given both projections (with biases); PyTorch's equations exactly."""
    if cell == "elman":
        return torch.tanh(gx + gh), c
    if cell == "gru":
        x_r, x_z, x_n = gx.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)  # the reset gate scales W_hn h + b_hn, bias included
        return (1 - z) * n + z * h, c
    i, f, g, o = (gx + gh).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


SPEC = ModelSpec(
    name="rnn",
    config=RNNConfig,
    init=init,
    apply=apply,
    param_count=param_count,
    inputs="tokens",
    data_fields=("vocab_size",),
)
