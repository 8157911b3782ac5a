"""The conventional baseline: an `nn.Module` GPT with the same math as `craft.models.gpt`.

Used by the benchmarks (with `torch.optim.AdamW` and `torch.compile(model)`) and by the tests as
a reference implementation; `load_craft_params` copies a Craft params tree into it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from craft.models.gpt import GPTConfig
from craft.tree import Params


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        d = cfg.n_embd
        self.n_head = cfg.n_head
        self.ln1 = nn.LayerNorm(d, bias=cfg.bias)
        self.qkv = nn.Linear(d, 3 * d, bias=cfg.bias)
        self.attn_proj = nn.Linear(d, d, bias=cfg.bias)
        self.ln2 = nn.LayerNorm(d, bias=cfg.bias)
        self.fc = nn.Linear(d, cfg.mlp_hidden, bias=cfg.bias)
        self.mlp_proj = nn.Linear(cfg.mlp_hidden, d, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class BaselineGPT(nn.Module):
    """nanoGPT-style: learned positions, LayerNorm, tied embeddings, no dropout."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.positions != "learned" or cfg.norm != "layer" or not cfg.tie_embeddings:
            raise ValueError("the baseline implements learned positions, LayerNorm, tied head")
        self.tok = nn.Embedding(cfg.vocab(), cfg.n_embd)
        self.pos = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        x = self.tok(tokens) + self.pos.weight[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.tok.weight)
        if targets is None:
            return logits
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-1
        )


@torch.no_grad()
def load_craft_params(model: BaselineGPT, params: Params) -> BaselineGPT:
    """Copy a Craft GPT params tree into the module (same layouts, other names)."""
    model.tok.weight.copy_(params["tok"]["embedding"])
    model.pos.weight.copy_(params["pos"]["embedding"])
    pairs = {
        "ln1": ("ln1", "scale", "bias"),
        "ln2": ("ln2", "scale", "bias"),
        "qkv": ("attn.qkv", "w", "b"),
        "attn_proj": ("attn.proj", "w", "b"),
        "fc": ("mlp.fc", "w", "b"),
        "mlp_proj": ("mlp.proj", "w", "b"),
    }
    for block, tree in zip(model.blocks, params["blocks"], strict=True):
        for module_name, (path, weight, bias) in pairs.items():
            node = tree
            for part in path.split("."):
                node = node[part]
            module = getattr(block, module_name)
            module.weight.copy_(node[weight])
            if module.bias is not None:
                module.bias.copy_(node[bias])
    model.ln_f.weight.copy_(params["ln_f"]["scale"])
    if model.ln_f.bias is not None:
        model.ln_f.bias.copy_(params["ln_f"]["bias"])
    return model
