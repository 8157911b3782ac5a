"""How much memory a GPT training step holds per sequence, for the memory planner.

Counted in fp32 values per sequence of T tokens (d: width, a: the heads' width, d unless heads
were pruned, h: MLP width, v: vocabulary), from what autograd saves in `craft/models/gpt.py`'s
forward and what its backward allocates, then checked against the measured peak heap of eager
and regionally compiled CPU steps (0.1M-25M params, T 64-256, vocabularies of 65-4096: the
estimate stayed above every measured peak):

- a block saves 4·T·d (norm inputs and outputs), 5·T·a (q/k/v, the attention output and
  its reshaped copy) and 2·T·h (the MLP's hidden layer before and after GELU);
  with activation checkpointing it keeps only its input, T·d, and one block is recomputed at
  a time in the backward;
- the head: the final norm, the backward's running gradients (5·T·d + 2·T·h) and the fp32
  logits, their log-softmax and its gradient (3·T·v), which dominate a subword vocabulary;
- 1,024 values per token of small temporaries (token ids, attention kernel buffers), which
  only show in models a few hundred wide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from craft.models.gpt import GPTConfig

_PER_TOKEN = 1024  # fp32 values of small per-token temporaries (measured; see above)


def activation_bytes(cfg: GPTConfig, shape: tuple[int, ...], remat: bool) -> float:
    """Bytes one sequence of `shape = (T,)` holds at the step's peak beyond the state."""
    (length,) = shape
    d, heads, hidden, vocab = cfg.n_embd, cfg.attn_width, cfg.mlp_hidden, cfg.vocab()
    block = length * (4 * d + 5 * heads + 2 * hidden)
    if cfg.dropout > 0:  # two boolean masks per block, a byte per value
        block += length * d // 2
    kept = cfg.n_layer * (length * d if remat else block)
    recomputed = block if remat else 0
    head = length * (5 * d + 2 * hidden) + 3 * length * vocab
    return 4.0 * (kept + recomputed + head + _PER_TOKEN * length)
