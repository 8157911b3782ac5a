"""`fit`: the training run around the pure step (data, evaluation, checkpoints, hooks).

The loop is plain Python on purpose: everything heavy happens in the compiled step. Batches are
a pure function of (seed, step), and the whole state (params, optimizer, step, RNG, loss scale)
lives in checkpoints, so a resumed run continues bit-exactly where it stopped.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import math
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from craft import checkpoint, distributed, tree
from craft.devices import peak_flops
from craft.errors import ConfigError, CraftError
from craft.models import model_spec
from craft.models.spec import ModelSpec
from craft.optim import SGD, AdamW, Optimizer, Schedule, masks
from craft.runs import RunConfig
from craft.tasks.base import Task
from craft.train import finetune, lora
from craft.train.config import TrainConfig
from craft.train.evaluate import evaluate
from craft.train.hooks import Hook, RunInfo
from craft.train.lora import LoRAConfig
from craft.train.meta import CheckpointMeta
from craft.train.pruning import MASKS, PruneConfig, Pruner, pruned_names
from craft.train.sharded import OptimizerShards
from craft.train.state import TrainState, init_state, to_device
from craft.train.step import StepFn, compile_scope_for, make_train_step
from craft.train.stop import Stopped, StopSignal
from craft.train.weights import EMA
from craft.tree import Params

RUN_CONFIGS = ("RunConfig", "TrainConfig", "MetricsConfig")
"""Configs every run uses (besides the model's, the optimizer's, the schedule and the task's)."""


class TrainingError(CraftError):
    """The run cannot go on (a non-finite loss, a checkpoint that does not fit)."""


@dataclass(frozen=True)
class Setup:
    """Everything `fit` needs, validated: the task, the model, optimizer, schedule, configs."""

    train: TrainConfig
    task: Task
    spec: ModelSpec
    model_cfg: Any  # the spec's config, data fields filled in
    optimizer: Optimizer
    schedule: Schedule
    seed: int
    configs: dict[str, BaseModel]
    """The configs this run uses, as trained (the schedule's length filled in)."""
    init_from: str | None = None
    """A checkpoint whose params the run starts from (RunConfig.init_from)."""
    lora: LoRAConfig | None = None
    """Low-rank adapters, when LoRAConfig.rank > 0: the params are `{"base", "lora"}`."""
    trainable: tuple[str, ...] | None = None
    """Dotted names of the params that train, in the state's params tree (None: all)."""
    pruning: PruneConfig | None = None
    """Gradual magnitude pruning (PruneConfig.sparsity > 0), else None."""
    pruned: tuple[str, ...] = ()
    """Dotted names of the weights pruned, in the state's params tree."""

    def apply(self, params: Params, inputs: Any, **kwargs: Any) -> Any:
        """The model over the state's params (the adapted model in a LoRA run)."""
        return self.spec.apply(self.model_params(params), inputs, cfg=self.model_cfg, **kwargs)

    def model_params(self, params: Params) -> Params:
        """The model's plain params from the state's (a LoRA run's adapters merged)."""
        return params if self.lora is None else lora.model_params(params, self.lora)

    def eval_params(self, state: TrainState) -> Params:
        """The model's plain params to use it with (evaluation, the best checkpoint's val loss,
        previews, samples), as inference reads them from a checkpoint: the EMA in place of the
        params it averages when the run keeps one (TrainConfig.ema_decay), a LoRA run's
        adapters merged. No copy, except the merged weights."""
        params = state.params
        if state.ema:
            named = tree.to_dotted(params)
            named.update(tree.to_dotted(state.ema))
            params = tree.from_dotted(named, like=params)
        return self.model_params(params)

    def initial_params(self, *, from_checkpoint: bool = True) -> Params:
        """The params a fresh run starts from: `init_from`'s (unless `from_checkpoint` is
        False: a resumed run only needs their shapes) or `init`'s, with adapters attached."""
        if self.init_from is not None and from_checkpoint:
            params = finetune.load_initial_params(self.init_from, self.spec, self.model_cfg)
        else:
            params = self.spec.init(self.model_cfg, seed=self.seed)
        if self.lora is not None:
            params = lora.attach(params, lora.init(params, self.lora, seed=self.seed))
        return params

    def fresh_state(self, *, from_checkpoint: bool = True) -> TrainState:
        """The state a run starts from: `initial_params` with the optimizer state, EMA and
        pruning masks the configs ask for."""
        return init_state(
            self.initial_params(from_checkpoint=from_checkpoint), self.optimizer,
            seed=self.seed, trainable=self.trainable, ema=self.train.ema_decay is not None,
            pruned=self.pruned,
        )  # fmt: skip

    def make_step(
        self, device: torch.device, *, rank: int | None = None,
        shards: OptimizerShards | None = None,
        grad_sync: Callable[[list[torch.Tensor]], None] | None = None,
    ) -> StepFn:  # fmt: skip
        """The training step TrainConfig describes, on the task's loss (the run's and the
        memory planner's probe step are built here alike)."""
        train = self.train
        return make_train_step(
            functools.partial(self.task.loss, self.apply), self.optimizer, self.schedule,
            precision=train.precision, accum_steps=train.accum_steps,
            clip_norm=train.clip_norm, compile=train.compile, compile_mode=train.compile_mode,
            compile_scope=train.compile_scope, grad_sync=grad_sync, shards=shards, rank=rank,
            deterministic=train.deterministic if train.deterministic is not None
            else device.type == "cpu",
            trainable=self.trainable, ema_decay=train.ema_decay, ema_warmup=train.ema_warmup,
        )  # fmt: skip


def make_setup(configs: dict[str, BaseModel], task: Task, seed: int) -> Setup:
    """Pick the registered model, let the task fill and check its config, fill the schedule,
    and check what fine-tuning asks (trainable patterns, LoRA targets) against the model."""
    train = _pick(configs, TrainConfig)
    spec = model_spec(train.model)
    task.check_model(spec)
    model_cfg = task.fill_model_config(spec, _pick(configs, spec.config))
    optimizer: Optimizer = (
        _pick(configs, AdamW) if train.optimizer == "adamw" else _pick(configs, SGD)
    )
    schedule = _pick(configs, Schedule).for_run(train.steps)
    run_cfg = configs.get(RunConfig.__name__)
    init_from = run_cfg.init_from if isinstance(run_cfg, RunConfig) else None
    lora_cfg = configs.get(LoRAConfig.__name__)
    adapters = lora_cfg if isinstance(lora_cfg, LoRAConfig) and lora_cfg.rank > 0 else None
    prune_cfg = configs.get(PruneConfig.__name__)
    pruning = prune_cfg if isinstance(prune_cfg, PruneConfig) and prune_cfg.enabled else None
    names = (*RUN_CONFIGS, type(optimizer).__name__, "Schedule", spec.config.__name__,
             *task.config_names, *([LoRAConfig.__name__] if adapters else []),
             *([PruneConfig.__name__] if pruning else []))  # fmt: skip
    used = {name: configs[name] for name in names if name in configs}
    used.update({"Schedule": schedule, spec.config.__name__: model_cfg})
    return Setup(
        train=train, task=task, spec=spec, model_cfg=model_cfg, optimizer=optimizer,
        schedule=schedule, seed=seed, configs=used, init_from=init_from, lora=adapters,
        trainable=_trainable(spec, model_cfg, train.trainable, adapters),
        pruning=pruning, pruned=_pruned(spec, model_cfg, pruning, adapters),
    )  # fmt: skip


def _trainable(
    spec: ModelSpec, model_cfg: Any, patterns: list[str] | None, adapters: LoRAConfig | None
) -> tuple[str, ...] | None:
    """The trainable names in the state's params, checked on the meta device (no memory)."""
    with torch.device("meta"):
        shapes = spec.init(model_cfg, seed=0)
    selected = masks.trainable_names(shapes, patterns)
    if adapters is None:
        return selected
    return lora.trainable(lora.attach(shapes, lora.shapes(shapes, adapters)), selected)


def _pruned(
    spec: ModelSpec, model_cfg: Any, pruning: PruneConfig | None, adapters: LoRAConfig | None
) -> tuple[str, ...]:
    """The names of the weights pruned, in the state's params, checked on the meta device."""
    if pruning is None:
        return ()
    with torch.device("meta"):
        shapes = spec.init(model_cfg, seed=0)
    if adapters is not None:
        shapes = lora.attach(shapes, lora.shapes(shapes, adapters))
    return tuple(pruned_names(shapes, pruning.targets))


def fit(
    setup: Setup,
    run_dir: Path,
    *,
    hooks: list[Hook] | tuple[Hook, ...] = (),
    resume: str | Path | None = None,
    world: distributed.World | None = None,
    stop: StopSignal | None = None,
) -> dict[str, Any]:
    """Train, evaluate, checkpoint and call the hooks; returns the run's summary.

    Under torchrun (`world` of several ranks) every rank trains on its slice of each global
    batch and applies the same summed update; only rank 0 writes files and calls hooks (every
    rank runs the checkpointer, which gathers a sharded optimizer state; rank 0 writes it).
    `stop`: the caller's SIGTERM watch (else `fit` installs its own while it runs).
    """
    train, task, spec = setup.train, setup.task, setup.spec
    world = world or distributed.World()
    if train.batch_size % (world.size * train.accum_steps):
        raise ConfigError(
            f"TrainConfig.batch_size = {train.batch_size} must split into {world.size} ranks x "
            f"{train.accum_steps} micro-batches"
        )
    if train.shard_optimizer and world.size > 1 and setup.pruning is not None:
        raise ConfigError(
            "TrainConfig.shard_optimizer does not apply pruning masks yet: turn pruning "
            "(PruneConfig.sparsity) or the sharded optimizer off"
        )
    if train.shard_optimizer and world.size > 1 and setup.trainable is not None:
        raise ConfigError(
            "TrainConfig.shard_optimizer shards every param's optimizer state: it does not "
            "support frozen params yet (TrainConfig.trainable, LoRA); turn one of them off"
        )
    device = run_device(train.device, world.local_rank)
    if train.threads:
        torch.set_num_threads(train.threads)
    checkpoints = run_dir / "checkpoints"
    # The whole state is built (and a checkpoint loaded) on the CPU; a sharded run moves only
    # its slice of the optimizer state to the device. A resumed run's checkpoint holds its
    # params, so init_from is not read again (it may be gone).
    state = setup.fresh_state(from_checkpoint=resume is None)
    if resume is not None:
        state = _restore(checkpoint.resolve(resume, checkpoints), state)
    shards = None
    if train.shard_optimizer and world.size == 1:
        warnings.warn("TrainConfig.shard_optimizer has no effect in a single process", stacklevel=2)
    if train.shard_optimizer and world.size > 1:
        shards = OptimizerShards(state.params, world.rank, world.size)
        state = shards.shard_state(state)
    state = to_device(state, device)
    start = int(state.step)
    if world.main:
        print(_run_line(setup, device, world, state), flush=True)
        checkpoints.mkdir(parents=True, exist_ok=True)
        for path in task.checkpoint_files():
            shutil.copy2(path, checkpoints / path.name)

    compiled = compile_scope_for(train.compile, train.compile_scope, train.compile_mode, device)
    step_fn = setup.make_step(
        device, rank=world.rank, shards=shards,
        grad_sync=distributed.all_reduce_sum if world.size > 1 and shards is None else None,
    )  # fmt: skip
    holder = {"state": state}
    pruner = Pruner(setup.pruning, train.steps) if setup.pruning is not None else None
    if pruner is not None:  # a schedule starting at this step prunes before it
        pruner.after_update(state.params, state.masks, state.ema, start)
    run = RunInfo(
        run_dir=run_dir,
        total_steps=train.steps,
        start_step=start,
        configs={name: cfg.model_dump(mode="json") for name, cfg in setup.configs.items()},
        model_name=spec.name,
        model_config=setup.model_cfg,
        task=task,
        # Hooks see the model's plain params as evaluation uses them (the EMA, a LoRA run's
        # adapters merged); the checkpointer saves the state as it is.
        read_state=lambda: _model_view(setup, holder["state"]),
    )
    example_flops = spec.flops(setup.model_cfg, task.example_shape(spec, setup.model_cfg))
    peak = peak_flops(device)
    checkpointer = Checkpointer(
        setup, train.checkpoint_every, train.keep_checkpoints, writes=world.main,
        whole=shards.full_state if shards is not None else None,
        read=lambda: holder["state"],
    )  # fmt: skip
    user_hooks = [_load_hook(path) for path in train.hooks]
    # Every rank runs the checkpointer (gathering a sharded state takes all of them); only
    # rank 0 writes, and only rank 0 runs the other hooks.
    all_hooks = [checkpointer, *hooks, *user_hooks] if world.main else [checkpointer]
    checkpointer.listeners = all_hooks if world.main else []

    # Evaluation runs the plain model on `setup.eval_params` (the EMA when there is one),
    # which are what inference loads from the checkpoint.
    model_loss_fn = functools.partial(task.loss, functools.partial(spec.apply, cfg=setup.model_cfg))

    def run_eval(step: int, whole: bool) -> dict[str, float]:
        named: dict[str, float] = {}
        params = setup.eval_params(holder["state"])
        for split in task.final_splits if whole else ("val",):
            results = evaluate(
                task, model_loss_fn, params, split, batch_size=train.eval_batch_size,
                device=device, max_batches=None if whole else train.eval_batches,
            )  # fmt: skip
            named.update({f"{split}/{key}": value for key, value in results.items()})
        for hook in all_hooks:
            hook.on_eval(run, step, named)
        return named

    summary: dict[str, Any] = {
        "status": "running", "start_step": start, "run_dir": str(run_dir), "compile": compiled,
    }  # fmt: skip
    final: dict[str, float] = {}
    started = time.perf_counter()
    step = start
    own_stop = stop is None
    stop = stop or StopSignal()
    if own_stop:
        stop.install()
    try:
        for hook in all_hooks:  # inside: a failing start still finishes the others (on_end)
            hook.on_start(run)
        stop.check(world, device)  # a SIGTERM while the data was being prepared
        while step < train.steps:
            tick = time.perf_counter()
            if step == start and compiled != "off":
                for hook in all_hooks:
                    hook.on_status(run, f"compiling the step ({compiled}): the first step waits")
            batch = task.train_batch(seed=setup.seed, step=step, size=train.batch_size)
            batch = distributed.shard(batch, world)
            batch = {name: value.to(device, non_blocking=True) for name, value in batch.items()}
            holder["state"], tensors = step_fn(holder["state"], batch)
            metrics = {name: float(value) for name, value in tensors.items()}
            step += 1
            if pruner is not None:
                state = holder["state"]
                pruner.after_update(state.params, state.masks, state.ema, step)
                metrics["sparsity"] = pruner.current or 0.0
            if not math.isfinite(metrics["loss"]) and train.precision != "fp16":
                last = checkpoint.list_checkpoints(checkpoints)
                raise TrainingError(
                    f"the loss became {metrics['loss']} at step {step}; stopping. "
                    + (
                        f"The last good checkpoint is {last[-1]}"
                        if last
                        else "No checkpoint was written."
                    )
                )
            elapsed = max(time.perf_counter() - tick, 1e-9)
            if step == start + 1:
                summary["first_step_s"] = round(elapsed, 2)
            weight = metrics.pop("weight")
            metrics.update({task.unit: weight, f"{task.unit}_per_s": weight / elapsed})
            metrics["step_time_s"] = elapsed
            if example_flops and peak:
                metrics["mfu"] = mfu(example_flops, train.batch_size, world.size, elapsed, peak)
            last_step = step == train.steps
            if train.eval_every and step % train.eval_every == 0 and not last_step:
                run_eval(step, whole=False)
            if last_step:
                final = run_eval(step, whole=True)
            for hook in all_hooks:
                hook.on_step_end(run, step, metrics)
            if not last_step:
                stop.check(world, device)
        summary["status"] = "finished"
        if checkpointer.last_saved != step:
            checkpointer.save(run, step)
    except KeyboardInterrupt:
        summary["status"] = "interrupted"
        if shards is not None:
            # Gathering would need every rank at the same point, which an interrupt does not
            # promise: the last periodic checkpoint stands.
            summary["note"] = "optimizer state is sharded: no checkpoint written at the interrupt"
        elif world.main and step > start and checkpointer.last_saved != step:
            checkpointer.save(run, step)
    except Stopped as signal_name:
        summary["status"] = "terminated"
        summary["note"] = f"stopped by {signal_name} after step {step}"
        if shards is not None and stop.alone:
            summary["note"] += "; another rank is gone, so the sharded state was not saved"
        elif step > start and checkpointer.last_saved != step:
            # Every rank stops after the same step: a sharded state can be gathered.
            checkpointer.save(run, step)
    except distributed.RankLostError as error:
        summary["status"] = "failed"
        if shards is None and world.main and step > start and checkpointer.last_saved != step:
            # The gradient sum comes before any update, so this rank's state is whole after
            # its last completed step; save it before torchrun stops the process.
            saved = checkpointer.save(run, step)
            raise distributed.RankLostError(
                f"{error}; the state after step {step} is saved: {saved}"
            ) from None
        raise
    except BaseException:
        summary["status"] = "failed"
        raise
    finally:
        if own_stop:
            stop.restore()
        summary.update(
            steps=step,
            examples=(step - start) * train.batch_size,
            seconds=round(time.perf_counter() - started, 2),
            metrics=final,
            best_val_loss=checkpointer.best_val_loss,
            checkpoint=str(checkpointer.last_path) if checkpointer.last_path else None,
        )
        for hook in all_hooks:
            try:
                hook.on_end(run, summary)
            except Exception as error:
                if summary["status"] != "failed":
                    raise
                # The run is already failing: its own error is the one to report.
                print(f"craft: warning: {type(hook).__name__} could not finish: {error}",
                      file=sys.stderr)  # fmt: skip
    return summary


class Checkpointer(Hook):
    """Saves every `every` steps (after that step's evaluation), keeps the newest `keep` and the
    best by val loss. The loop also calls `save` at the end, on SIGTERM (the ranks agree on the
    step first) and on Ctrl-C unless the optimizer state is sharded (gathering it needs every
    rank at the same point, which a Ctrl-C does not promise)."""

    def __init__(
        self,
        setup: Setup,
        every: int,
        keep: int,
        *,
        writes: bool = True,
        whole: Callable[[TrainState], TrainState] | None = None,
        read: Callable[[], TrainState] | None = None,
    ):
        """`writes`: False on ranks other than 0 (they only take part in `whole`). `whole`:
        makes the state whole before saving (a collective for a sharded optimizer state).
        `read`: the training state as it is (default: `run.read_state`)."""
        self.setup, self.every, self.keep = setup, every, keep
        self.writes, self.whole, self.read = writes, whole, read
        self.val_loss: dict[int, float] = {}
        self.last_saved: int | None = None
        self.last_path: Path | None = None
        self.best_val_loss: float | None = None
        self.listeners: list[Hook] = []  # told on_checkpoint after each save

    def on_eval(self, run: RunInfo, step: int, results: dict[str, float]) -> None:
        loss = results["val/loss"]
        self.val_loss[step] = loss
        if self.best_val_loss is None or loss < self.best_val_loss:
            self.best_val_loss = loss

    def on_step_end(self, run: RunInfo, step: int, metrics: dict[str, float]) -> None:
        if self.every and step % self.every == 0 and step < run.total_steps:
            self.save(run, step)

    def save(self, run: RunInfo, step: int) -> Path | None:
        read = self.read or run.read_state
        assert read is not None
        state: TrainState = read()
        if self.whole is not None:
            state = self.whole(state)
        if not self.writes:
            self.last_saved = step
            return None
        meta = {
            "step": step,
            "data_position": step,
            "val_loss": self.val_loss.get(step),
            "task": self.setup.task.name,
            "task_meta": self.setup.task.checkpoint_meta(),
            "model": self.setup.spec.name,
            "model_config": self.setup.model_cfg.model_dump(mode="json"),
            "configs": run.configs,
            "versions": {"torch": torch.__version__, "craft": importlib.metadata.version("craft")},
        }
        directory = run.run_dir / "checkpoints"
        # Through the reader's schema, so that what is written is what readers accept.
        record = CheckpointMeta.model_validate(meta).as_dict()
        path = checkpoint.save(directory, state._asdict(), step, record)
        checkpoint.prune(directory, self.keep)
        self.last_saved, self.last_path = step, path
        for hook in self.listeners:
            hook.on_checkpoint(run, step, path)
        return path


def _restore(path: Path, fresh: TrainState) -> TrainState:
    """The checkpoint's state, shaped like `fresh`. Resuming refuses a change of
    TrainConfig.ema_decay or PruneConfig unless asked (craft.resume), so a checkpoint without
    the EMA or the pruning masks this run keeps (written before they were turned on) is an
    accepted change: the EMA starts from the checkpoint's params, the masks from keeping
    every weight. An EMA or masks this run does not keep are left out. Each case is said."""
    table = checkpoint.tensor_table(path)
    wanted = {EMA: bool(fresh.ema), MASKS: bool(fresh.masks)}
    held = {part: any(name.startswith(f"{part}.") for name in table) for part in wanted}
    differ = [part for part in wanted if held[part] != wanted[part]]
    like = fresh._asdict()
    like.update({part: {} for part in differ})
    skip = tuple(part for part in differ if held[part])
    loaded, _ = checkpoint.load(path, like=like, skip=skip)
    state = TrainState(**loaded)
    at = int(state.step)
    for part in differ:
        if part == EMA and not held[part]:
            named = tree.to_dotted(state.params)
            ema = tree.from_dotted(
                {name: named[name].clone() for name in tree.to_dotted(fresh.ema)}, like=fresh.ema
            )
            state = state._replace(ema=ema)
            note = f"holds no EMA of the params: it starts from them at step {at}"
        elif part == EMA:
            note = "holds an EMA of the params, which this run (ema_decay = None) leaves out"
        elif not held[part]:
            state = state._replace(masks=fresh.masks)
            note = f"holds no pruning masks: pruning starts from every weight at step {at}"
        else:
            note = (
                "holds pruning masks, which this run (PruneConfig.sparsity = 0) leaves out: "
                "its pruned weights may grow again"
            )
        print(f"craft: warning: {path.name} {note}", file=sys.stderr)
    return state


def find_hook(path: str) -> Any:
    """The Hook class (or factory) an import path in TrainConfig.hooks names; imports it, makes
    nothing, so a bad path fails before a run prepares its data."""
    module_name, _, class_name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"TrainConfig.hooks: cannot load '{path}': {error}") from None


def _load_hook(path: str) -> Hook:
    hook = find_hook(path)()
    if not isinstance(hook, Hook):
        raise ConfigError(f"TrainConfig.hooks: '{path}' is not a craft.train.hooks.Hook")
    return hook


def run_device(name: str, local_rank: int) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("TrainConfig.device = 'cuda', but no CUDA device is available")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)  # one GPU per torchrun process


def mfu(example_flops: float, batch_size: int, ranks: int, seconds: float, peak: float) -> float:
    """Model FLOPs utilisation of one process: its share of the global batch (batch_size /
    ranks examples) per second, against its own device's peak."""
    return example_flops * (batch_size / ranks) / seconds / peak


def _run_line(
    setup: Setup, device: torch.device, world: distributed.World, state: TrainState
) -> str:
    """The run's first line: device, ranks and backend, task, model and its size (and what
    trains, in a fine-tuning run; the EMA's decay when it keeps one)."""
    threads = f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""
    ranks = f"{world.size} ranks ({distributed.backend()})" if world.size > 1 else "1 process"
    params = tree.count(state.params)
    size = f"{params:,} parameters"
    if setup.trainable is not None:
        trained = tree.count(masks.select(state.params, setup.trainable))
        size += f", {trained:,} trainable ({100 * trained / params:.2f}%)"
    if setup.lora is not None:
        size += f", LoRA rank {setup.lora.rank}"
    if setup.init_from is not None and not int(state.step):
        size += f", from {setup.init_from}"
    if setup.train.ema_decay is not None:
        size += f", EMA {setup.train.ema_decay}"
    return (
        f"craft: {device}{threads}, {ranks}; task {setup.task.name}; "
        f"model {setup.spec.name}, {size}"
    )


def _model_view(setup: Setup, state: TrainState) -> TrainState:
    """The state with the model's plain params as evaluation uses them (`Setup.eval_params`),
    for hooks that run the model."""
    return state._replace(params=setup.eval_params(state))


def _pick(configs: dict[str, BaseModel], kind: type[Any]) -> Any:
    name = kind.__name__
    if name not in configs:
        raise ConfigError(f"the run needs {name}, which is not among the configs")
    return configs[name]
