"""Pure layers: each is `init_*(...) -> params` and a function `(params, x, ...) -> y`.

Weights use PyTorch's layouts (`linear` is `[out, in]`, as `F.linear` expects) so a params tree
maps one-to-one onto the matching `nn.Module` state dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from craft.nn.random import uniform
from craft.tree import Params


def normal(shape: tuple[int, ...], std: float, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator) * std


def init_linear(
    d_in: int, d_out: int, generator: torch.Generator, *, bias: bool = True, std: float = 0.02
) -> Params:
    params: Params = {"w": normal((d_out, d_in), std, generator)}
    if bias:
        params["b"] = torch.zeros(d_out)
    return params


def linear(params: Params, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, params["w"], params.get("b"))


def init_embedding(num: int, dim: int, generator: torch.Generator, std: float = 0.02) -> Params:
    return {"embedding": normal((num, dim), std, generator)}


def embedding(params: Params, ids: torch.Tensor) -> torch.Tensor:
    return F.embedding(ids, params["embedding"])


def init_layer_norm(dim: int, *, bias: bool = True) -> Params:
    params: Params = {"scale": torch.ones(dim)}
    if bias:
        params["bias"] = torch.zeros(dim)
    return params


def layer_norm(params: Params, x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), params["scale"], params.get("bias"), eps)


def init_rms_norm(dim: int) -> Params:
    return {"scale": torch.ones(dim)}


def rms_norm(params: Params, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), params["scale"], eps)


def init_mlp(
    dim: int, hidden: int, generator: torch.Generator, *, bias: bool, out_std: float
) -> Params:
    return {
        "fc": init_linear(dim, hidden, generator, bias=bias),
        "proj": init_linear(hidden, dim, generator, bias=bias, std=out_std),
    }


ACTIVATIONS = {
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's "gelu_new"
    "gelu": F.gelu,
    "relu": F.relu,
}
"""The MLP's nonlinearities by name (`GPTConfig.activation`)."""


def mlp(params: Params, x: torch.Tensor, activation: str = "gelu_tanh") -> torch.Tensor:
    return linear(params["proj"], ACTIVATIONS[activation](linear(params["fc"], x)))


def dropout(x: torch.Tensor, rate: float, key: torch.Tensor | None) -> torch.Tensor:
    """Inverted dropout with an explicit key; identity when `key` is None or `rate` is 0."""
    if key is None or rate == 0.0:
        return x
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must lie in [0, 1), got {rate}")
    keep = uniform(key, x.shape) >= rate
    return torch.where(keep, x / (1.0 - rate), torch.zeros((), dtype=x.dtype, device=x.device))


def next_token_loss(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean cross-entropy over targets >= 0 (-1 marks padding); aux["weight"] holds the count
    of scored tokens."""
    value = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-1
    )
    return value, {"weight": (targets >= 0).sum()}
