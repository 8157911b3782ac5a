"""`make_train_step`: `step(state, batch) -> (state, metrics)`, a functional signature that
consumes its state.

Not a pure function: the state passed in is consumed, as a donated buffer is in JAX. Params and
optimizer state are updated in place and the same tensors come back; use the returned state.
Keeping one copy of them is what makes large models fit. Inside, each micro-batch runs a
compiled forward (autocast when asked) and PyTorch's own autograd computes the gradients into
`.grad`; one compiled update unscales, clips and applies the optimizer in place, then moves
the EMA of the params (when asked) towards them. Compiled by regions (the CPU default), only
the model's repeated block is compiled, once for every layer, and the update runs eagerly
(the optimizer's fused kernel): the same math, a first step in seconds.

The step knows nothing of tasks: a batch is any dict of tensors split along dim 0, and the loss
says how much each micro-batch weighs (tokens, images). Params require gradients only while the
step runs, so code outside it (evaluation, hooks, sampling) records no autograd graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, get_args

import torch

from craft import distributed, tree
from craft.nn.random import fold_in
from craft.nn.region import compiled_regions
from craft.optim import Optimizer
from craft.optim.masks import select
from craft.train.inductor import trust_cpu_vector_isa
from craft.train.pruning import apply_masks
from craft.train.sharded import OptimizerShards
from craft.train.state import TrainState
from craft.tree import Params

Precision = Literal["fp32", "bf16", "fp16"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)
CompileScope = Literal["auto", "regions", "whole"]
COMPILE_SCOPES: tuple[str, ...] = get_args(CompileScope)
Batch = dict[str, torch.Tensor]
LossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""`loss_fn(params, batch, *, rng) -> (mean loss, {"weight": n, ...})`: the mean over the
micro-batch's n units (tokens, images); the step weighs micro-batches and ranks by n."""
Metrics = dict[str, torch.Tensor]
StepFn = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
GROWTH_INTERVAL = 2000  # good fp16 steps before the loss scale doubles


def make_train_step(
    loss_fn: LossFn,
    optimizer: Optimizer,
    schedule: Callable[[torch.Tensor], torch.Tensor],
    *,
    precision: Precision = "fp32",
    accum_steps: int = 1,
    clip_norm: float | None = None,
    compile: bool = True,
    compile_mode: CompileMode = "default",
    compile_scope: CompileScope = "auto",
    growth_interval: int = GROWTH_INTERVAL,
    grad_sync: Callable[[list[torch.Tensor]], None] | None = None,
    shards: OptimizerShards | None = None,
    rank: int | None = None,
    deterministic: bool = True,
    trainable: Sequence[str] | None = None,
    ema_decay: float | None = None,
    ema_warmup: bool = True,
) -> StepFn:
    """Build the step. `loss_fn(params, batch, *, rng) -> (mean loss, {"weight": n, ...})`.

    - precision: fp32; bf16 (autocast, fp32 master params); fp16 (autocast plus dynamic loss
      scaling: a step with inf/nan gradients is skipped, the scale halves, and it doubles after
      `growth_interval` good steps).
    - accum_steps: the batch is cut into that many micro-batches along dim 0; the loss is the
      mean over all their units (the loss's weight), exactly as for one big batch.
    - clip_norm: clip the global gradient norm; metrics report the norm before clipping.
    - compile: torch.compile the forward and the update (False to debug eagerly).
    - compile_mode: torch.compile's mode. "reduce-overhead" and "max-autotune" replay CUDA graphs
      on a GPU (one launch for many small kernels): params and optimizer state are marked as
      static addresses (they are updated in place), and accum_steps must be 1, since a replay
      reuses the memory of the previous micro-batch's gradients.
    - compile_scope: "regions" compiles each compile region of the model (`craft.nn.region`,
      e.g. a GPT block) once and reuses it for every layer, runs the rest of the forward
      eagerly, and runs the update eagerly (the optimizer's fused multi-tensor kernel; with
      `shards` the sharded update stays compiled): a graph over every leaf grows with the
      model's depth, and so does its compile time.
      "whole" compiles the whole forward and the whole update as one graph each. "auto":
      regions on a CPU, whole elsewhere (and whenever CUDA graphs are replayed).
    - grad_sync: data parallel; sums tensors across processes in place (e.g.
      `craft.distributed.all_reduce_sum`). Called once per step, after the last micro-batch,
      on the gradients and on the loss and weight sums, so every rank normalises by the global
      weight and applies the same update.
    - shards: data parallel with the optimizer state sharded (ZeRO-1, `craft.train.sharded`):
      gradients are reduce-scattered, each rank updates its slice of the params, and the params
      are all-gathered. The state's `opt_state` must be this rank's slice
      (`shards.shard_state` / `shards.init`). Takes the place of `grad_sync`.
    - rank: under data parallel, this process's rank (default: the process group's, or 0).
      Its rows of the global batch start at `rank x local batch`, and each row's dropout key
      follows its global row, so the masks do not depend on how the batch is split over ranks
      and micro-batches.

    - deterministic: run the compiled forward and backward in PyTorch's deterministic mode.
      Inductor lowers an accumulating scatter (an embedding's backward) to float atomic adds
      from several threads, whose order follows thread timing: two same-seed compiled CPU runs
      then differ in the last bit from the first step. In deterministic mode it calls ATen's
      ordered `index_put_` instead (no measurable cost on 2 CPU cores). Eager steps are
      deterministic either way.
    - trainable: the dotted names of the params that train (None: all), as given to
      `init_state`. The others are frozen: they never require gradients (autograd computes
      none for them), are left out of the norm and clipping, and are not updated; the
      optimizer sees only the trainable sub-tree, whose state `init_state` built.
    - ema_decay: keep `state.ema`, an exponential moving average of the trained params (build
      the state with `init_state(..., ema=True)`). Right after each applied optimizer update,
      in the same compiled graph, `ema = d * ema + (1 - d) * params`, where d is `ema_decay`,
      or with `ema_warmup` `min(ema_decay, (1 + n) / (10 + n))` for the update that brings
      the state's step to n (n = 1, 2, ...; skipped fp16 steps count too), so the average of
      a short run is not dominated by the initial params. A skipped fp16 step moves neither
      the params nor the EMA. d is computed from the state's step tensor, so no step
      recompiles. With `shards`, every rank keeps the whole EMA and updates it after the
      params are gathered.

    - pruning: when the state holds masks (`init_state(..., pruned=names)`), each masked
      weight (and its EMA) is multiplied by its mask right after every update, so pruned
      entries stay zero; `craft.train.pruning.Pruner` decides the masks between steps.

    The state given to `step` is consumed: params, optimizer state and EMA are updated in
    place.
    """
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    if clip_norm is not None and clip_norm <= 0:
        raise ValueError(f"clip_norm must be positive, got {clip_norm}")
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
    if compile_scope not in COMPILE_SCOPES:
        raise ValueError(f"compile_scope must be one of {COMPILE_SCOPES}, got {compile_scope!r}")
    graphs = compile and compile_mode in ("reduce-overhead", "max-autotune")
    if graphs and compile_scope == "regions":
        raise ValueError(
            f"compile_mode={compile_mode!r} replays the whole step as CUDA graphs: use "
            "compile_scope='whole' (or 'auto')"
        )
    if graphs and accum_steps > 1:
        raise ValueError(
            f"compile_mode={compile_mode!r} replays CUDA graphs, which needs accum_steps=1 "
            f"(got {accum_steps}): a replay reuses the previous micro-batch's gradient memory"
        )
    if compile:
        trust_cpu_vector_isa()
    rank = distributed.rank() if rank is None else rank
    if shards is not None and shards.rank != rank:
        raise ValueError(f"shards were planned for rank {shards.rank}, but this is rank {rank}")
    if shards is not None and trainable is not None:
        raise ValueError("shards cover every param: frozen params (trainable) are not supported")
    if shards is not None and grad_sync is not None:
        raise ValueError("give grad_sync or shards, not both: shards does its own reduction")
    if ema_decay is not None and not 0.0 < ema_decay < 1.0:
        raise ValueError(
            f"ema_decay must be in (0, 1) (e.g. 0.999), or None for no EMA; got {ema_decay}"
        )
    autocast_dtype = _AUTOCAST.get(precision)

    def forward(
        params: Params, micro: Batch, key: torch.Tensor, scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device_type = key.device.type
        with torch.autocast(
            device_type, autocast_dtype or torch.float32, autocast_dtype is not None
        ):
            loss, aux = loss_fn(params, micro, rng=key)
        weight = aux["weight"]
        # A weighted sum, so that micro-batches add up to one mean over the whole batch.
        objective = loss.float() * weight * scale
        return objective, loss.detach().float() * weight, weight

    def unscale(
        grads: list[torch.Tensor], weight: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        torch._foreach_mul_(grads, 1.0 / (weight * scale))
        return tree.global_norm(grads)

    def apply_update(state: TrainState, grads: Params, norm: torch.Tensor) -> torch.Tensor:
        if clip_norm is not None:
            coef = (clip_norm / (norm + 1e-6)).clamp(max=1.0)
            torch._foreach_mul_(tree.leaves(grads), coef)
        lr = schedule(state.step)
        optimizer.update(grads, state.opt_state, state.params, lr=lr)
        apply_masks(state.params, state.masks)  # pruned weights stay zero
        if ema_decay is not None:
            update_ema(state)
            apply_masks(state.ema, state.masks)
        return lr

    def update_ema(state: TrainState) -> None:
        # state.step counts the updates before this one.
        n = state.step.to(torch.float32) + 1
        decay = (1 + n) / (10 + n) if ema_warmup else torch.ones_like(n)
        decay = decay.clamp(max=ema_decay)
        ema = tree.leaves(state.ema)
        # One weight tensor per leaf: a lone tensor would be taken as a Scalar (a host sync).
        torch._foreach_lerp_(ema, tree.leaves(state.params), [1 - decay] * len(ema))

    def unscale_slice(
        local: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        # Sharded: this rank's flat gradient slice (zero padding adds nothing to the norm).
        local.mul_(1.0 / (weight * scale))
        return torch.linalg.vector_norm(local.float())

    def apply_update_slice(state: TrainState, grads: Params, norm: torch.Tensor) -> torch.Tensor:
        # The slice's gradients are views of one flat buffer. Clipping them in place would make
        # the compiled graph mutate aliased inputs (15x slower on a CPU; so is splitting the
        # buffer inside the graph); out of place, inductor fuses the scale into the update.
        if clip_norm is not None:
            coef = (clip_norm / (norm + 1e-6)).clamp(max=1.0)
            grads = tree.tree_map(lambda g: g * coef, grads)
        lr = schedule(state.step)
        optimizer.update(grads, state.opt_state, state.params, lr=lr)
        return lr

    def update(
        state: TrainState, grads: Params, weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        norm = unscale(tree.leaves(grads), weight, state.loss_scale["scale"])
        return norm, apply_update(state, grads, norm)

    def maybe_compile(fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
        # A mode is a set of inductor options; torch.compile takes a mode or options, not both.
        options = {**torch._inductor.list_mode_options(compile_mode), **options}
        return torch.compile(fn, options=options or None) if compile else fn

    # Foreach updates and norm reductions in one graph crashed inductor on CUDA
    # (pytorch#176591); turning off loop reordering, for these graphs only, avoids it.
    safe = {"loop_ordering_after_fusion": False}
    forward_c = maybe_compile(forward)
    update_c = maybe_compile(update, **safe)  # fp32 / bf16: unscale, clip, update in one graph
    unscale_c, apply_update_c = maybe_compile(unscale, **safe), maybe_compile(apply_update, **safe)
    update_ema_c = None
    if shards is not None:
        unscale_c = maybe_compile(unscale_slice, **safe)
        apply_update_c = maybe_compile(apply_update_slice, **safe)
        if ema_decay is not None:  # the whole EMA, once the params are whole again
            update_ema_c = maybe_compile(update_ema)

    region_options = {**torch._inductor.list_mode_options(compile_mode)}
    checked: dict[str, Params] = {}  # the last EMA tree checked against the trained params

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        if not batch:
            raise ValueError("the batch is empty: give a dict of tensors split along dim 0")
        trained = select(state.params, trainable)
        if checked.get("ema") is not state.ema:  # once per state, not every step
            _check_ema(state, trained, ema_decay)
            checked["ema"] = state.ema
        if shards is not None and state.masks:
            raise ValueError("pruning masks are not applied by the sharded update yet")
        params = tree.leaves(trained)
        for p in params:  # gradients are recorded only inside the step, for trained params
            p.requires_grad_(True)
        try:
            return run(state, batch, trained, params)
        finally:
            for p in params:
                p.grad = None
                p.requires_grad_(False)

    def run(
        state: TrainState, batch: Batch, trained: Params, params: list[torch.Tensor]
    ) -> tuple[TrainState, Metrics]:
        if graphs:
            _mark_static(state)
            torch.compiler.cudagraph_mark_step_begin()
        micros = _split(batch, accum_steps)
        step_key = fold_in(state.rng, state.step)
        regional = compile_scope_for(compile, compile_scope, compile_mode, step_key.device) == (
            "regions"
        )
        scale = state.loss_scale["scale"]
        rows = torch.arange(_rows(micros[0]), device=step_key.device)
        first_row = rank * _rows(batch)
        loss_sums, weights = [], []
        for index, micro in enumerate(micros):
            # One key per row of the global batch: dropout masks follow the data, not the split.
            row_keys = fold_in(step_key, rows + (first_row + index * len(rows)))
            with contextlib.ExitStack() as scope:
                if deterministic and compile:
                    # The backward is compiled lazily on its first call: it must see the mode too.
                    scope.enter_context(_deterministic())
                if regional:
                    scope.enter_context(compiled_regions(region_options))
                objective, micro_loss, micro_weight = (forward if regional else forward_c)(
                    state.params, micro, row_keys, scale
                )
                objective.backward()
            if graphs:  # the graph's outputs live in memory that its next replay overwrites
                micro_loss, micro_weight = micro_loss.clone(), micro_weight.clone()
            loss_sums.append(micro_loss)
            weights.append(micro_weight)
        loss_sum, weight = sum(loss_sums[1:], loss_sums[0]), sum(weights[1:], weights[0])
        grad_list = [_grad(p) for p in params]
        for p in params:
            p.grad = None
        with torch.no_grad():
            if shards is not None:
                norm, lr, skipped = _sharded_update(
                    state, shards, grad_list, loss_sum, weight, unscale_c, apply_update_c,
                    growth_interval if precision == "fp16" else None, update_ema_c,
                )  # fmt: skip
            else:
                if grad_sync is not None:
                    grad_sync([*grad_list, loss_sum, weight])
                grads = tree.unflatten(tree.flatten(trained)[1], grad_list)
                # The optimizer sees the trained params only (the same tensors, so the
                # update lands in state.params).
                view = state if trainable is None else state._replace(params=trained)
                if precision == "fp16":
                    norm, lr, skipped = _fp16_update(
                        view, grads, weight,
                        unscale if regional else unscale_c,
                        apply_update if regional else apply_update_c, growth_interval,
                    )  # fmt: skip
                else:
                    norm, lr = (update if regional else update_c)(view, grads, weight)
                    skipped = torch.zeros((), dtype=torch.int64)
            state.step.add_(1)
        metrics = {
            "loss": loss_sum / weight.clamp(min=1),
            # In graph mode the update's outputs live in memory its next replay overwrites.
            "lr": lr.clone() if graphs else lr,
            "grad_norm": norm.clone() if graphs else norm,
            "weight": weight,
        }
        if precision == "fp16":  # loss scaling exists only in fp16
            metrics["skipped"] = skipped
            metrics["loss_scale"] = state.loss_scale["scale"].clone()
        return state, metrics

    return step


def compile_scope_for(
    compile: bool, scope: CompileScope, mode: CompileMode, device: torch.device
) -> Literal["off", "regions", "whole"]:
    """What a step built with these settings compiles on `device`. "auto": regions on a CPU,
    unless CUDA graphs are replayed; whole elsewhere."""
    if not compile:
        return "off"
    if scope == "auto":
        graphs = mode in ("reduce-overhead", "max-autotune")
        return "regions" if device.type == "cpu" and not graphs else "whole"
    return scope


def _fp16_update(
    state: TrainState,
    grads: Params,
    weight: torch.Tensor,
    unscale: Callable[..., torch.Tensor],
    apply_update: Callable[..., torch.Tensor],
    growth_interval: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Skip the update on inf/nan gradients and adapt the loss scale (one host sync, as
    torch.amp.GradScaler does)."""
    norm = unscale(tree.leaves(grads), weight, state.loss_scale["scale"])
    if not _fp16_scale_allows(state, norm, growth_interval):
        return norm, torch.zeros(()), torch.ones((), dtype=torch.int64)
    return norm, apply_update(state, grads, norm), torch.zeros((), dtype=torch.int64)


def _fp16_scale_allows(state: TrainState, norm: torch.Tensor, growth_interval: int) -> bool:
    """Adapt the loss scale to this step's gradient norm; False: skip the update."""
    scale, good = state.loss_scale["scale"], state.loss_scale["good_steps"]
    if not bool(torch.isfinite(norm)):
        scale.mul_(0.5)
        good.zero_()
        return False
    good.add_(1)
    if int(good) >= growth_interval:
        scale.mul_(2.0)
        good.zero_()
    return True


def _sharded_update(
    state: TrainState,
    shards: OptimizerShards,
    grad_list: list[torch.Tensor],
    loss_sum: torch.Tensor,
    weight: torch.Tensor,
    unscale: Callable[..., torch.Tensor],
    apply_update: Callable[..., torch.Tensor],
    growth_interval: int | None,
    update_ema: Callable[[TrainState], None] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ZeRO-1: reduce-scatter the gradients, update this rank's slice, all-gather the params.
    `growth_interval` is given for fp16 (loss scaling; every rank sees the same global norm, so
    all skip together). `update_ema`: moves the whole EMA towards the gathered params (every
    rank holds the same params then, so the ranks' EMAs stay equal)."""
    local = shards.scatter_sum(grad_list)
    distributed.all_reduce_sum([loss_sum, weight])
    norm = shards.global_norm(unscale(local, weight, state.loss_scale["scale"]))
    if growth_interval is not None and not _fp16_scale_allows(state, norm, growth_interval):
        return norm, torch.zeros(()), torch.ones((), dtype=torch.int64)
    lr = apply_update(state._replace(params=shards.own(state.params)), shards.split(local), norm)
    shards.gather_params(state.params)
    if update_ema is not None:
        update_ema(state)
    return norm, lr, torch.zeros((), dtype=torch.int64)


def _check_ema(state: TrainState, trained: Params, ema_decay: float | None) -> None:
    """The state's EMA must be there exactly when the step keeps one, over the trained
    params (the update pairs their leaves in order)."""
    if ema_decay is None:
        if state.ema:
            raise ValueError(
                "the state holds an EMA of the params, but the step has no ema_decay: the EMA "
                "would never move; give make_train_step an ema_decay, or build the state "
                "without one (init_state(..., ema=False))"
            )
        return
    if not state.ema:
        raise ValueError(
            f"the step keeps an EMA (ema_decay={ema_decay}), but the state holds none: build "
            "it with init_state(..., ema=True)"
        )
    if tree.flatten(state.ema)[1] != tree.flatten(trained)[1]:
        raise ValueError(
            "the state's EMA does not hold the trained params under their names: build the "
            "state with init_state(..., trainable=<the step's trainable>, ema=True)"
        )


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """PyTorch's deterministic algorithms for the block, restored after it. warn_only: an op
    without a deterministic version warns instead of raising; uninitialised memory is not
    NaN-filled (that costs time and changes no result)."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill  # type: ignore[attr-defined]


def _mark_static(state: TrainState) -> None:
    """Tell the compiler that params, optimizer state and EMA keep their addresses (they are updated
    in place), so CUDA graphs read them where they are instead of copying them in each replay.
    Tensors of a new state (a restored checkpoint) are marked when they first come."""
    for tensor in tree.leaves((state.params, state.opt_state, state.ema)):
        # The attribute mark_static_address sets: checking it costs far less than marking.
        if getattr(tensor, "_dynamo_static_input_type", None) is None:
            torch._dynamo.mark_static_address(tensor)


def _grad(param: torch.Tensor) -> torch.Tensor:
    # A param the loss never touched has no grad: its gradient is zero.
    return param.grad if param.grad is not None else torch.zeros_like(param)


def _rows(batch: Batch) -> int:
    return next(iter(batch.values())).shape[0]


def _split(batch: Batch, parts: int) -> list[Batch]:
    size = _rows(batch)
    if size % parts:
        raise ValueError(f"batch size {size} is not divisible by accum_steps={parts}")
    chunks = {name: value.chunk(parts) for name, value in batch.items()}
    return [{name: chunks[name][i] for name in batch} for i in range(parts)]
