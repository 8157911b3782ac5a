"""The memory planner: how a run's batch fits `TrainConfig.memory_budget_mb`.

What counts is everything training holds above the process's resting level (torch loaded, no
model state): params, gradients, optimizer state, EMA and masks, and a step's activations and
temporaries. On a CPU that is the live heap (glibc's mallinfo2: bytes malloc handed out and
not taken back), on a GPU the CUDA allocator's peak. Budgets are in MiB (2**20 bytes).

The plan picks the micro-batch (so `TrainConfig.accum_steps`) and, for a model that has it,
activation checkpointing (`remat`). It comes from an analytic estimate: the state's bytes,
counted exactly on the meta device, plus a micro-batch's activations from the model's
`ModelSpec.activation_bytes` (a model without it is measured: two probe steps of one and two
examples). One measured probe step at the planned micro-batch (a real step, built as the run
builds it) checks it. If it measures above the budget, the estimate is raised by what it
missed and the next plan down is probed, at most `MAX_PROBES` times; if it fits and the
estimate was high, the estimate is lowered by as much and one faster plan is probed, kept
only if it fits too. Among the plans that fit, the fastest by a simple cost model wins: a
micro-batch costs a fixed overhead plus its examples' work, and checkpointing recomputes each
block's forward. On a CPU that means the largest micro-batch that fits without
checkpointing, unless checkpointing lets a small model's micro-batch grow several times over.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from pydantic import BaseModel

from craft import distributed, tree
from craft.errors import ConfigError
from craft.models import model_spec
from craft.optim.masks import select
from craft.tasks.base import Task
from craft.train.config import TrainConfig
from craft.train.loop import Setup, make_setup
from craft.train.peak_memory import PeakMemory
from craft.train.state import TrainState, to_device

MIB = 2**20
MAX_PROBES = 3
"""Probe steps at most, one per plan tried (a model without an analytic estimate: two more)."""
BASE_MARGIN_MIB = 4.0
"""Allocator slack and small buffers any step holds (up to 2.4 MiB measured on tiny GPTs)."""
STATE_SLACK = 0.01
"""The same, growing with the heap: 7 MiB above params, gradients and AdamW (1.5 GiB) at
100M params."""
COMPILE_HEAP_MIB = 24.0
"""What a compiled step leaves on a CPU heap (generated code, graphs, guards): 18 to 23 MiB
measured for GPT regions, torch 2.13. A GPU's allocator does not see it."""
REMAT_COST = 1 / 3
"""Checkpointing recomputes each block's forward: a third of a step's work (0.31 to 0.38
measured on a 1M GPT, eager, one CPU thread); it also doubles a micro-batch's fixed cost."""
MICRO_OVERHEAD_TOKENS = 128
"""A micro-batch's fixed cost, in tokens of work: small micro-batches run slower per token
(dispatch, and matrix products of few rows). Measured on one CPU thread, eager: a 1M GPT
costs about 40 tokens per micro-batch; a 10M GPT with a 2,048-token vocabulary ran 2.5 times
slower per token at 128 tokens per micro-batch than at 192 or more."""


@dataclass(frozen=True)
class StateBytes:
    """What the training state holds, in bytes, before any step."""

    params: int
    grads: int  # one fp32 gradient per trained param
    optimizer: int
    other: int  # EMA, pruning masks, step, RNG key, loss scale
    largest_grad: int  # the largest trained param's gradient

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.other


@dataclass(frozen=True)
class MemoryPlan:
    """A plan for one rank: `micro_batch` examples x `accum_steps` per optimizer step."""

    budget_mb: float
    micro_batch: int
    accum_steps: int
    remat: bool | None
    """Activation checkpointing; None: the model has none."""
    static_mb: float
    """Params, gradients, optimizer state (and EMA, masks): what no plan can shrink."""
    optimizer: str
    compile_mb: float
    """What a compiled CPU step leaves on the heap (code, graphs), within the estimate."""
    estimated_mb: float | None
    """The analytic estimate of the step's peak (None: the model has none)."""
    measured_mb: float | None = None
    """The probe step's measured peak (None: not probed)."""
    kept: tuple[str, ...] = ()
    """Settings given by the user that the plan kept rather than chose."""

    def settings(self) -> str:
        micro = f"micro-batch {self.micro_batch} x {self.accum_steps} accumulation step" + (
            "s" if self.accum_steps > 1 else ""
        )
        if self.remat is not None:
            micro += f", activation checkpointing {'on' if self.remat else 'off'}"
        if self.kept:
            micro += f" ({' and '.join(self.kept)} as given)"
        return micro

    def describe(self) -> str:
        """One line for the run's start."""
        parts = [f"craft: memory plan for {self.budget_mb:g} MiB: {self.settings()}"]
        state = f"params+grads+{self.optimizer} {self.static_mb:.0f} MiB" + (
            f", compiled code {self.compile_mb:.0f} MiB" if self.compile_mb else ""
        )
        if self.estimated_mb is not None:
            parts.append(f"estimated {self.estimated_mb:.0f} MiB ({state})")
        else:
            parts.append(state)
        if self.measured_mb is not None:
            parts.append(f"probe step measured {self.measured_mb:.0f} MiB")
        return "; ".join(parts)


@dataclass(frozen=True)
class _Option:
    micro: int
    remat: bool | None


class _Planner:
    """The candidates, their estimates and costs for one setup."""

    def __init__(self, setup: Setup, shape: tuple[int, ...], per_rank: int, device: torch.device):
        train, spec = setup.train, setup.spec
        self.setup, self.per_rank, self.device = setup, per_rank, device
        self.state = state_bytes(setup)
        self.act = spec.activation_bytes
        self.shape = shape
        self.measured_act: tuple[float, float] | None = None  # (first example, each more)
        self.offset = 0.0  # what probes showed the estimate missed, in bytes
        self.compile_heap = COMPILE_HEAP_MIB * MIB if train.compile and device.type == "cpu" else 0
        self.fixed = BASE_MARGIN_MIB * MIB + STATE_SLACK * self.state.total + self.compile_heap
        if train.precision != "fp32":  # autocast keeps a half copy of the weights it casts
            self.fixed += self.state.params // 2
        # The fixed cost in examples (a token model's examples are sequences of shape[0]).
        self.overhead = MICRO_OVERHEAD_TOKENS / shape[0] if spec.inputs == "tokens" else 1.0
        self.scale = 1.0  # set by a probe that measured less than estimated
        self.kept: list[str] = []
        self.options = self._options(train, setup.model_cfg)

    def _options(self, train: TrainConfig, model_cfg: BaseModel) -> list[_Option]:
        micros = [m for m in range(self.per_rank, 0, -1) if self.per_rank % m == 0]
        if "accum_steps" in train.model_fields_set:
            if self.per_rank % train.accum_steps:
                raise ConfigError(
                    f"TrainConfig.accum_steps = {train.accum_steps} does not divide the "
                    f"{self.per_rank} examples each rank takes per step"
                )
            micros = [self.per_rank // train.accum_steps]
            self.kept.append(f"TrainConfig.accum_steps = {train.accum_steps}")
        elif train.compile_mode in ("reduce-overhead", "max-autotune"):
            micros = [self.per_rank]  # CUDA graphs need accum_steps = 1
        remats: list[bool | None] = [None]
        if "remat" in type(model_cfg).model_fields:
            if "remat" in model_cfg.model_fields_set:
                remats = [getattr(model_cfg, "remat")]  # noqa: B009 (not every config has it)
                self.kept.append(f"{type(model_cfg).__name__}.remat = {remats[0]}")
            elif self.act is not None:  # without an estimate, checkpointing cannot be weighed
                remats = [False, True]
            else:
                remats = [False]
        return [_Option(m, r) for m in micros for r in remats]

    @property
    def analytic(self) -> bool:
        return self.act is not None

    def estimate(self, option: _Option) -> float:
        """Bytes at the step's peak: the state, the fixed part and the micro-batch's share.

        With accumulation, a micro-batch's activations live beside the gradients summed so
        far. Without, the backward's peak comes before most gradients exist (the first, the
        output layer's, beside every activation) or at its end, when all gradients exist and
        the activations are gone: whichever is larger."""
        state = self.state
        if self.act is None:  # measured: the first example beside the whole state, then more
            assert self.measured_act is not None, "measure the activations first"
            first, more = self.measured_act
            return state.total + self.fixed + first + (option.micro - 1) * more + self.offset
        per_example = self.act(self.setup.model_cfg, self.shape, bool(option.remat))
        activations = option.micro * per_example
        held = state.total - state.grads  # params, optimizer state, EMA, masks
        if option.micro < self.per_rank:
            peak = held + state.grads + activations
        else:
            peak = held + max(state.grads, activations + 2 * state.largest_grad)
        above = peak + self.fixed - state.total  # what the step adds to the state
        return state.total + self.scale * above + self.offset

    def learn(self, option: _Option, measured: float) -> None:
        """Correct the estimate by a probe's measurement: up by what it missed (an offset,
        which over-covers smaller plans), or down in proportion to what the step added."""
        estimated = self.estimate(option)
        if measured > estimated:
            self.offset += measured - estimated
        elif self.offset == 0 and estimated > self.state.total:
            above = estimated - self.state.total
            self.scale *= max(measured - self.state.total, 0.0) / above

    def cost(self, option: _Option) -> float:
        """Relative step time: per micro-batch a fixed overhead plus its examples' work;
        checkpointing adds a third to the work and doubles the overhead (measured)."""
        remat = bool(option.remat)
        work = option.micro * (1 + REMAT_COST * remat)
        return self.per_rank / option.micro * (self.overhead * (1 + remat) + work)

    def choose(self, budget: float) -> _Option | None:
        fitting = [o for o in self.options if self.estimate(o) <= budget]
        if not fitting:
            return None
        # The cheapest; among equals, the larger micro-batch and no checkpointing.
        return min(fitting, key=lambda o: (self.cost(o), -o.micro, bool(o.remat)))

    def smallest(self) -> _Option:
        return min(self.options, key=self.estimate)


def state_bytes(setup: Setup) -> StateBytes:
    """The bytes of the state `fit` builds for `setup`, counted on the meta device."""
    with torch.device("meta"):
        state = setup.fresh_state(from_checkpoint=False)
    trained = select(state.params, setup.trainable)
    params, grads = _nbytes(state.params), _nbytes(trained)
    optimizer = _nbytes(state.opt_state)
    largest = max((_nbytes(leaf) for leaf in tree.leaves(trained)), default=0)
    return StateBytes(params, grads, optimizer, _nbytes(state) - params - optimizer, largest)


def plan_run(
    configs: dict[str, BaseModel], task: Task, *, device: torch.device,
    world: distributed.World | None = None, seed: int = 0, probe: bool = True,
) -> tuple[dict[str, BaseModel], MemoryPlan | None]:  # fmt: skip
    """The configs with `TrainConfig.accum_steps` and the model's `remat` set by the plan for
    `TrainConfig.memory_budget_mb` (unchanged, and no plan, without a budget). `probe`: check
    the plan with one measured step (False: the analytic plan alone)."""
    train = _train_config(configs)
    if train.memory_budget_mb is None:
        return configs, None
    world = world or distributed.World()
    budget = train.memory_budget_mb * MIB
    setup = make_setup(configs, task, seed)
    per_rank = _per_rank(train, world.size)
    planner = _Planner(setup, task.example_shape(setup.spec, setup.model_cfg), per_rank, device)
    if planner.state.total > budget:  # no step needed to know
        raise _refusal(train, planner, None)
    probing = probe and PeakMemory(device).available
    # Probes are measured from the level before the first, so what one leaves behind (compiled
    # code, runtime buffers) counts against the next and against the run, as it will.
    rest = PeakMemory.level(device) if probing else 0
    if not planner.analytic:
        if not probing:
            raise ConfigError(
                f"TrainConfig.memory_budget_mb: the {setup.spec.name!r} model has no analytic "
                "memory estimate, and memory cannot be measured here (glibc's mallinfo2 or "
                "CUDA are needed); leave memory_budget_mb unset"
            )
        planner.measured_act = _measure_activations(configs, task, planner, world, seed, rest)

    def measure(option: _Option) -> tuple[dict[str, BaseModel], MemoryPlan, float]:
        planned = _planned(configs, setup, option, per_rank)
        measured = _probe(planned, task, device, world, seed, rest)
        plan = _plan_of(planner, option, train, measured)
        planner.learn(option, measured)  # the next plans are judged with what it showed
        return planned, plan, measured

    last: MemoryPlan | None = None
    for tries in range(MAX_PROBES):
        option = planner.choose(budget)
        if option is None:
            if tries > 0 or not probing:
                raise _refusal(train, planner, last)
            option = planner.smallest()  # the estimate may be high: a probe decides
        if not probing:
            return _planned(configs, setup, option, per_rank), _plan_of(planner, option, train)
        planned, last, measured = measure(option)
        if measured > budget:
            continue
        # It fits. Had the estimate been high, a faster plan may fit too: one probe decides.
        faster = planner.choose(budget) if tries == 0 else None
        if faster is not None and planner.cost(faster) < planner.cost(option):
            planned_up, plan_up, measured_up = measure(faster)
            if measured_up <= budget:
                return planned_up, plan_up
        return planned, last
    assert last is not None
    raise ConfigError(
        f"TrainConfig.memory_budget_mb = {train.memory_budget_mb:g}: {MAX_PROBES} planned "
        f"steps measured above the budget (the last, {last.settings()}, took "
        f"{last.measured_mb:.0f} MiB); raise the budget"
    )


def show_plan(
    configs: dict[str, BaseModel], *, data_fields: Mapping[str, Any] | None = None,
    example_shape: tuple[int, ...] | None = None, world_size: int = 1,
) -> list[str]:  # fmt: skip
    """The analytic plan as `# memory plan: ...` lines, for `show_config` (no data is read,
    nothing is trained or measured; [] without a budget). `data_fields`: model-config fields
    the data decides, when known (`{"vocab_size": 2048}`); `example_shape`: one example's shape
    (default: a token model's longest context). Raises ConfigError when the budget cannot
    hold even the state, naming the smallest that fits."""
    train = _train_config(configs)
    if train.memory_budget_mb is None:
        return []
    spec = model_spec(train.model)
    model_cfg = configs[spec.config.__name__]
    if data_fields:
        model_cfg = model_cfg.model_copy(update=dict(data_fields))
    missing = [name for name in spec.data_fields if getattr(model_cfg, name) is None]
    if missing:
        name = f"{type(model_cfg).__name__}.{missing[0]}"
        return [f"# memory plan: planned when the run starts ({name} comes from the dataset)"]
    context = spec.max_length(model_cfg)
    shape = example_shape or ((context,) if spec.inputs == "tokens" and context else None)
    stand_in = cast(Task, _ShapesOnly(model_cfg))
    setup = make_setup({**configs, spec.config.__name__: model_cfg}, stand_in, 0)
    device = torch.device("cuda" if train.device != "cpu" and torch.cuda.is_available() else "cpu")
    per_rank = _per_rank(train, world_size)
    if shape is None or spec.activation_bytes is None:
        state = state_bytes(setup)
        optimizer = type(setup.optimizer).__name__
        return [
            f"# memory plan: params+grads+{optimizer} {state.total / MIB:.0f} MiB of "
            f"{train.memory_budget_mb:g} MiB; the {spec.name} model's activations are measured "
            "when the run starts"
        ]
    planner = _Planner(setup, shape, per_rank, device)
    option = planner.choose(train.memory_budget_mb * MIB)
    if option is None and planner.state.total > train.memory_budget_mb * MIB:
        raise _refusal(train, planner, None)
    if option is None:  # the run's probe step may still find the smallest plan fits
        smallest = _plan_of(planner, planner.smallest(), train)
        return [
            f"# memory plan for {smallest.budget_mb:g} MiB: even {smallest.settings()} is "
            f"estimated at {smallest.estimated_mb:.0f} MiB; a run measures it with one step "
            "and refuses the budget if it does not fit"
        ]
    plan = _plan_of(planner, option, train)
    return [
        f"# memory plan for {plan.budget_mb:g} MiB: {plan.settings()}",
        f"# {plan.describe().split('; ', 1)[1]}; a run checks it with one measured step",
    ]


def _probe(
    configs: dict[str, BaseModel], task: Task, device: torch.device, world: distributed.World,
    seed: int, rest: int,
) -> float:  # fmt: skip
    """The peak bytes of one real training step (its state built inside), above `rest`."""
    setup = make_setup(configs, task, seed)
    train = setup.train
    if train.threads:
        torch.set_num_threads(train.threads)
    with PeakMemory(device, base=rest) as meter:
        state = to_device(setup.fresh_state(from_checkpoint=False), device)
        step = setup.make_step(device, rank=world.rank)
        batch = distributed.shard(task.train_batch(seed=seed, step=0, size=train.batch_size), world)
        batch = {name: value.to(device) for name, value in batch.items()}
        state, metrics = step(state, batch)
        float(metrics["loss"])  # waits for the device
        del state, step, batch, metrics
    return float(meter.peak)


def _measure_activations(
    configs: dict[str, BaseModel], task: Task, planner: _Planner, world: distributed.World,
    seed: int, rest: int,
) -> tuple[float, float]:  # fmt: skip
    """A model without an analytic estimate: the bytes beyond the state of one example, and
    of each more, from steps of one and two examples (without checkpointing)."""
    base = planner.state.total + planner.fixed
    peaks = []
    for micro in (1, 2) if planner.per_rank >= 2 else (1,):
        option = _Option(micro, False if planner.options[0].remat is not None else None)
        train = _train_config(configs)
        batch = micro * world.size
        trial = {**configs, "TrainConfig": _revalidate(train, batch_size=batch, accum_steps=1)}
        planned = _planned(trial, planner.setup, option, micro)
        peaks.append(_probe(planned, task, planner.device, world, seed, rest))
    first = max(peaks[0] - base, 0.0)
    more = max(peaks[1] - peaks[0], 0.0) if len(peaks) == 2 else first
    return first, more


def _planned(
    configs: dict[str, BaseModel], setup: Setup, option: _Option, per_rank: int
) -> dict[str, BaseModel]:
    train = _train_config(configs)
    planned = dict(configs)
    planned["TrainConfig"] = _revalidate(train, accum_steps=per_rank // option.micro)
    if option.remat is not None:
        name = setup.spec.config.__name__
        planned[name] = _revalidate(configs[name], remat=option.remat)
    return planned


def _plan_of(
    planner: _Planner, option: _Option, train: TrainConfig, measured: float | None = None
) -> MemoryPlan:
    assert train.memory_budget_mb is not None
    saved, planner.scale, planner.offset = (planner.scale, planner.offset), 1.0, 0.0
    analytic = planner.estimate(option)
    planner.scale, planner.offset = saved
    return MemoryPlan(
        budget_mb=train.memory_budget_mb, micro_batch=option.micro,
        accum_steps=planner.per_rank // option.micro, remat=option.remat,
        static_mb=round(planner.state.total / MIB, 1),
        optimizer=type(planner.setup.optimizer).__name__,
        compile_mb=planner.compile_heap / MIB,
        estimated_mb=round(analytic / MIB, 1) if planner.analytic else None,
        measured_mb=None if measured is None else round(measured / MIB, 1),
        kept=tuple(planner.kept),
    )  # fmt: skip


def _refusal(train: TrainConfig, planner: _Planner, probed: MemoryPlan | None) -> ConfigError:
    """Too small a budget: what the state alone takes and the smallest budget that fits."""
    smallest = planner.smallest()
    needed = math.ceil(planner.estimate(smallest) / MIB)
    state_mib = planner.state.total / MIB
    optimizer = type(planner.setup.optimizer).__name__
    what = f"micro-batch {smallest.micro}" + (
        "" if smallest.remat is None else
        f", activation checkpointing {'on' if smallest.remat else 'off'}"
    )  # fmt: skip
    budget = f"TrainConfig.memory_budget_mb = {train.memory_budget_mb:g}"
    if planner.state.total > (train.memory_budget_mb or 0.0) * MIB:
        reason = f"params, gradients and {optimizer} state alone take {state_mib:.0f} MiB"
    else:
        reason = (
            f"params, gradients and {optimizer} state take {state_mib:.0f} MiB, and one step "
            f"({what}) needs {needed - state_mib:.0f} MiB more"
            + (
                f" (a probe step of {probed.settings()} measured {probed.measured_mb:.0f} MiB)"
                if probed is not None
                else ""
            )
        )
        if planner.compile_heap:
            reason += (
                f", {planner.compile_heap / MIB:.0f} MiB of it the compiled step's code and graphs "
                "(TrainConfig.compile = False saves them)"
            )
    kept = (
        f"; {' and '.join(planner.kept)} as given fix the plan: leave them unset to let the "
        "planner choose"
        if planner.kept
        else ""
    )
    return ConfigError(
        f"{budget} cannot hold this run: {reason}; the smallest budget that fits is "
        f"{needed} MiB ({what}){kept}"
    )


def _per_rank(train: TrainConfig, ranks: int) -> int:
    if train.batch_size % ranks:
        raise ConfigError(
            f"TrainConfig.batch_size = {train.batch_size} does not split over {ranks} ranks"
        )
    return train.batch_size // ranks


def _nbytes(value: Any) -> int:
    return sum(
        leaf.numel() * leaf.element_size()
        for leaf in tree.leaves(tuple(value) if isinstance(value, TrainState) else value)
        if isinstance(leaf, torch.Tensor)
    )


def _revalidate(cfg: Any, **update: Any) -> Any:
    """`cfg` with `update`, validated again; the fields set stay set, the others unset."""
    return type(cfg).model_validate({**cfg.model_dump(exclude_unset=True), **update})


def _train_config(configs: Mapping[str, BaseModel]) -> TrainConfig:
    train = configs["TrainConfig"]
    assert isinstance(train, TrainConfig)
    return train


class _ShapesOnly:
    """Stands in for a task where no data is read (show_config): the model config as given,
    its data fields filled by the caller."""

    config_names: tuple[str, ...] = ()

    def __init__(self, model_cfg: BaseModel):
        self.model_cfg = model_cfg

    def check_model(self, spec: Any) -> None:
        pass

    def fill_model_config(self, spec: Any, cfg: BaseModel) -> BaseModel:
        return self.model_cfg


__all__ = ["MemoryPlan", "StateBytes", "plan_run", "show_plan", "state_bytes"]
