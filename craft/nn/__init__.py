"""Pure layer functions and their inits; no `nn.Module` anywhere in Craft."""

from craft.nn.attention import (
    apply_rotary,
    cached_self_attention,
    causal_self_attention,
    init_attention,
    rotary_tables,
)
from craft.nn.conv import (
    avg_pool2d,
    conv2d,
    global_avg_pool,
    group_norm,
    init_conv2d,
    init_group_norm,
    max_pool2d,
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
    "avg_pool2d",
    "cached_self_attention",
    "causal_self_attention",
    "conv2d",
    "dropout",
    "embedding",
    "fold_in",
    "global_avg_pool",
    "group_norm",
    "init_attention",
    "init_conv2d",
    "init_embedding",
    "init_group_norm",
    "init_layer_norm",
    "init_linear",
    "init_mlp",
    "init_rms_norm",
    "key",
    "layer_norm",
    "linear",
    "max_pool2d",
    "mlp",
    "next_token_loss",
    "rms_norm",
    "rotary_tables",
    "uniform",
]
