"""The conventional baseline: the CNN of `craft.models.cnn` as PyTorch modules.

Used by `benchmarks/mnist.py` (with `torch.optim.AdamW`, a `DataLoader` and
`torch.compile(model)`) and by the tests as a reference; `baseline_cnn` loads a Craft params tree.
"""

from __future__ import annotations

from torch import nn

from craft.models.cnn import CNNConfig
from craft.tree import Params


def baseline_cnn(params: Params, cfg: CNNConfig) -> nn.Sequential:
    """The same network as `nn.Conv2d`, `nn.MaxPool2d`, `nn.Linear`..., loaded with `params`."""
    layers: list[nn.Module] = []
    for index, layer in enumerate(params["convs"]):
        w = layer["conv"]["w"]
        conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], padding=w.shape[2] // 2)
        conv.load_state_dict({"weight": w, "bias": layer["conv"]["b"]})
        layers.append(conv)
        if cfg.norm == "group":
            norm = nn.GroupNorm(cfg.groups, w.shape[0])
            norm.load_state_dict({"weight": layer["norm"]["scale"], "bias": layer["norm"]["bias"]})
            layers.append(norm)
        layers.append(nn.ReLU())
        if (index + 1) % cfg.convs_per_stage == 0:
            layers.append(nn.MaxPool2d(2))
    if cfg.head == "global_avg":
        layers.append(nn.AdaptiveAvgPool2d(1))
    layers.append(nn.Flatten())
    if cfg.hidden:
        layers += [*_dropout(cfg), _linear(params["hidden"]), nn.ReLU()]
    layers += [*_dropout(cfg), _linear(params["head"])]
    return nn.Sequential(*layers)


def _dropout(cfg: CNNConfig) -> list[nn.Module]:
    return [nn.Dropout(cfg.dropout)] if cfg.dropout else []


def _linear(params: Params) -> nn.Linear:
    module = nn.Linear(params["w"].shape[1], params["w"].shape[0])
    module.load_state_dict({"weight": params["w"], "bias": params["b"]})
    return module
