"""Loss, perplexity and bits per token (and per character) over a whole split."""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import islice
from typing import Any

import numpy as np
import torch

from craft.data.datasets import eval_batches
from craft.tree import Params

LossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


@torch.no_grad()
def evaluate(
    loss_fn: LossFn,
    params: Params,
    tokens: np.ndarray,
    *,
    block_size: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    max_batches: int | None = None,
    chars: int | None = None,
) -> dict[str, float]:
    """Token-weighted mean loss over the split (or its first `max_batches` batches).

    `chars`: the split's length in characters, for bits per character (subword tokenizers).
    """
    total_nats, total_tokens = 0.0, 0
    batches = eval_batches(tokens, block_size=block_size, batch_size=batch_size)
    for batch in islice(batches, max_batches):
        batch = {name: value.to(device) for name, value in batch.items()}
        loss, aux = loss_fn(params, batch, rng=None)
        count = int(aux["tokens"])
        total_nats += float(loss) * count
        total_tokens += count
    mean = total_nats / max(total_tokens, 1)
    results: dict[str, Any] = {
        "loss": mean,
        "perplexity": math.exp(min(mean, 700.0)),
        "bits_per_token": mean / math.log(2),
        "tokens": total_tokens,
    }
    if chars and max_batches is None:
        # Tokens per character of this split turn bits per token into bits per character
        # (the same number for a char tokenizer).
        results["bits_per_char"] = results["bits_per_token"] * len(tokens) / chars
    return results
