"""Loading a checkpoint for evaluation and generation: model, params and tokenizer."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from craft import checkpoint
from craft.checkpoint import CheckpointError
from craft.data.tokenizers import Tokenizer, load_tokenizer
from craft.models import CONFIGS, MODELS
from craft.tree import Params


@dataclass(frozen=True)
class Loaded:
    """A model ready to use: which family, its config, params, tokenizer and loss."""

    path: Path
    model_name: str
    model_cfg: Any
    params: Params
    tokenizer: Tokenizer
    loss_fn: Callable[..., Any]
    meta: dict[str, Any]


def load_for_inference(path: Path) -> Loaded:
    """Params only (no optimizer state), checked against the config saved in the checkpoint;
    the tokenizer file must lie beside the checkpoint, as training leaves it."""
    path = Path(path)
    meta = checkpoint.read_meta(path)
    name = meta.get("model")
    if name not in MODELS:
        raise CheckpointError(f"{path} names an unknown model {name!r}")
    model_cfg = CONFIGS[name].model_validate(meta["model_config"])
    module = MODELS[name]
    params, _ = checkpoint.load(path, like=module.init(model_cfg, seed=0), prefix="params")
    tokenizer_path = path.parent / str(meta.get("tokenizer"))
    if not meta.get("tokenizer") or not tokenizer_path.is_file():
        raise CheckpointError(
            f"{path} has no tokenizer beside it (expected {tokenizer_path}); copy the dataset's "
            "tokenizer file (tokenizer.json or tokenizer.model) next to the checkpoint"
        )
    return Loaded(
        path=path,
        model_name=name,
        model_cfg=model_cfg,
        params=params,
        tokenizer=load_tokenizer(tokenizer_path),
        loss_fn=functools.partial(module.loss, cfg=model_cfg),
        meta=meta,
    )
