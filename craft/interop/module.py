"""Any `nn.Module` as Craft's model shape: a params tree and a pure `apply`, via torch.func.

`from_module(module)` copies the module's parameters into a nested dict tree (dotted names
split: `transformer.h.0.attn.c_attn.weight`) and returns `apply(params, *args, **kwargs)`,
which runs the module's forward with those params through `torch.func.functional_call`. The
step, the optimizers, checkpoints and data parallel then treat it like any Craft model; the
module itself only lends its code and its buffers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _NormBase

from craft import tree
from craft.tree import Params

Apply = Callable[..., Any]
"""`apply(params, *args, **kwargs) -> whatever the module's forward returns`."""
Criterion = Callable[[Any, torch.Tensor], "torch.Tensor | tuple[torch.Tensor, dict[str, Any]]"]
"""`criterion(outputs, targets)`: a mean over the target elements, or (mean, {"weight": n})."""


def from_module(module: nn.Module) -> tuple[Params, Apply]:
    """`(params, apply)` for `module`: detached copies of its parameters as a nested dict tree,
    and `apply(params, *args, **kwargs)` = `module(*args, **kwargs)` computed with `params`.

    - Tied parameters (GPT-2's `lm_head.weight` is `transformer.wte.weight`) appear once, under
      the first name `named_parameters()` gives, and every use of them sees that one tensor.
    - Buffers are not params: each call passes the module's current buffers, untrained and
      not saved with the params. Keep the module on the params' device (moving it is harmless:
      its own parameters are never read).
    - The module is not changed, and so must not change itself in forward. A norm layer that
      tracks running statistics (BatchNorm, InstanceNorm with `track_running_stats`) in train
      mode would write them into the module's buffers, so it is refused: call `module.eval()`
      first (the statistics are then fixed buffers, used as they are) or use a norm without
      running statistics (GroupNorm, LayerNorm). Refused rather than silently dropped, because
      a model trained on batch statistics but evaluated with statistics that never moved is
      wrong without saying so; and the statistics are not in the params, so neither
      checkpoints nor data parallel ranks would carry them. In eager mode `apply` also checks
      that no other buffer was written in place.
    - Dropout in the module draws from torch's global generator, not from Craft's `rng` key, so
      masks do not follow the run's seed or the batch split; use eval mode or zero dropout
      where that matters.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"from_module takes an nn.Module, got {type(module).__name__}")
    # remove_duplicate (the default) leaves a tied parameter under its first name only;
    # functional_call (tie_weights=True) then feeds that tensor to every tied use.
    flat = {name: p.detach().clone() for name, p in module.named_parameters()}
    if not flat:
        raise ValueError(f"{type(module).__name__} has no parameters to train")
    params = tree.from_dotted(flat)
    stat_norms = [
        (name, m)
        for name, m in module.named_modules()
        if isinstance(m, _NormBase) and m.track_running_stats
    ]
    _refuse_stat_updates(module, stat_norms)

    def apply(params: Params, *args: Any, **kwargs: Any) -> Any:
        _refuse_stat_updates(module, stat_norms)  # train() may have been called since
        buffers = dict(module.named_buffers())
        # strict: every param must be given, so a missing leaf is an error instead of the
        # module's own (stale) parameter being used in its place.
        tensors = {**tree.to_dotted(params), **buffers}
        if torch.compiler.is_compiling() or not buffers:
            return functional_call(module, tensors, args, kwargs, strict=True)
        # Inference tensors keep no version counter (and cannot be written outside inference).
        versions = {n: b._version for n, b in buffers.items() if not b.is_inference()}
        out = functional_call(module, tensors, args, kwargs, strict=True)
        written = [n for n, v in versions.items() if buffers[n]._version != v]
        if written:
            raise RuntimeError(
                f"{type(module).__name__}'s forward wrote to its buffers {written}: from_module "
                "keeps the module unchanged, and these writes would not be trained or saved; "
                "put the module in eval mode or keep that state out of buffers"
            )
        return out

    return params, apply


def supervised_loss(
    apply: Apply, criterion: Criterion, *, inputs: str = "inputs", targets: str = "targets"
) -> Callable[..., tuple[torch.Tensor, dict[str, Any]]]:
    """`loss_fn(params, batch, *, rng)` for `make_train_step`: `criterion(apply(params,
    batch[inputs]), batch[targets])`. A criterion that returns a tensor is a mean over the
    target elements (tokens, images), which are then its weight; one that returns (mean,
    {"weight": n, ...}) says its own weight (e.g. when it ignores padding). `rng` is unused:
    see `from_module` on dropout."""

    def loss_fn(
        params: Params, batch: dict[str, torch.Tensor], *, rng: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        out = criterion(apply(params, batch[inputs]), batch[targets])
        if isinstance(out, tuple):
            return out
        target = batch[targets]
        return out, {"weight": torch.tensor(target.numel(), device=target.device)}

    return loss_fn


def _refuse_stat_updates(module: nn.Module, stat_norms: Sequence[tuple[str, nn.Module]]) -> None:
    training = [name or type(m).__name__ for name, m in stat_norms if m.training]
    if training:
        raise ValueError(
            f"{type(module).__name__} is in train mode with norm layers that update running "
            f"statistics in forward ({', '.join(training)}); from_module does not change the "
            "module, so call module.eval() first (the statistics stay fixed buffers) or use "
            "GroupNorm / LayerNorm"
        )
