"""Pure layer functions and their inits; no `nn.Module` anywhere in Craft."""

from craft.nn.attention import (
    apply_rotary,
    cached_self_attention,
    causal_self_attention,
    init_attention,
    rotary_tables,
)
from craft.nn.layers import (
    dropout,
    embedding,
    init_embedding,
    init_layer_norm,
    init_linear,
    init_mlp,
    init_rms_norm,
    layer_norm,
    linear,
    mlp,
    next_token_loss,
    rms_norm,
)
from craft.nn.random import fold_in, key, uniform

__all__ = [
    "apply_rotary",
    "cached_self_attention",
    "causal_self_attention",
    "dropout",
    "embedding",
    "fold_in",
    "init_attention",
    "init_embedding",
    "init_layer_norm",
    "init_linear",
    "init_mlp",
    "init_rms_norm",
    "key",
    "layer_norm",
    "linear",
    "mlp",
    "next_token_loss",
    "rms_norm",
    "rotary_tables",
    "uniform",
]
