"""The memory planner: the state's bytes, plans that stay under their budget, refusals."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from craft import config, tree
from craft.errors import ConfigError
from craft.tasks import LanguageModeling
from craft.train import init_state, make_train_step, memory, to_device
from craft.train.config import TrainConfig
from craft.train.loop import make_setup
from craft.train.peak_memory import PeakMemory
from tests.conftest import CliRunner, craft_configs

TEXT = "".join(f"SPEAKER_{i % 5}: words of line {i}, said plainly.\n" for i in range(300))
CPU = torch.device("cpu")


def open_run(tmp_path: Path, settings: str) -> tuple[dict[str, Any], LanguageModeling]:
    """Configs and the lm task over a tiny char corpus (eager steps: deterministic peaks)."""
    text = tmp_path / "tiny.txt"
    if not text.exists():
        text.write_text(TEXT)
    config.reset()
    config.parse(
        [],
        [
            f"DataConfig.source = '{text}'\nDataConfig.prepared_dir = '{text}.prepared'\n"
            "TrainConfig.compile = False\n" + settings
        ],
    )
    configs = craft_configs()
    LanguageModeling.prepare(configs)
    return configs, LanguageModeling.open(configs)


def gpt(layers: int, width: int, block: int, batch: int, extra: str = "") -> str:
    return (
        f"GPTConfig.n_layer = {layers}\nGPTConfig.n_head = 2\nGPTConfig.n_embd = {width}\n"
        f"GPTConfig.block_size = {block}\nTrainConfig.batch_size = {batch}\n{extra}"
    )


def measured_step_mib(configs: dict[str, Any], task: LanguageModeling) -> float:
    """The peak heap of building the state and one step, as planned, above the level before."""
    setup = make_setup(configs, task, seed=0)
    train = setup.train
    with PeakMemory(CPU) as meter:
        state = to_device(setup.fresh_state(from_checkpoint=False), CPU)
        step = make_train_step(
            lambda p, b, *, rng: task.loss(setup.apply, p, b, rng=rng),
            setup.optimizer, setup.schedule, accum_steps=train.accum_steps,
            clip_norm=train.clip_norm, compile=False, trainable=setup.trainable,
            ema_decay=train.ema_decay,
        )  # fmt: skip
        state, _ = step(state, task.train_batch(seed=0, step=0, size=train.batch_size))
        del state, step
    held = memory.state_bytes(setup)
    assert meter.peak >= held.params + held.optimizer  # the meter sees at least the state
    return meter.peak / memory.MIB


@pytest.mark.parametrize(
    ("optimizer", "extra"),
    [
        ("adamw", ""),
        ("sgd", "TrainConfig.ema_decay = 0.99\n"),
        ("adamw", "TrainConfig.trainable = ['blocks.0.*']\nTrainConfig.ema_decay = 0.9\n"),
    ],
)
def test_the_static_part_is_the_real_states_bytes(
    tmp_path: Path, optimizer: str, extra: str
) -> None:
    configs, task = open_run(
        tmp_path, gpt(2, 32, 16, 4, f"TrainConfig.optimizer = '{optimizer}'\n{extra}")
    )
    setup = make_setup(configs, task, seed=0)
    state = init_state(
        setup.initial_params(), setup.optimizer, trainable=setup.trainable,
        ema=setup.train.ema_decay is not None,
    )  # fmt: skip

    def nbytes(value: Any) -> int:
        return sum(t.numel() * t.element_size() for t in tree.leaves(value))

    counted = memory.state_bytes(setup)
    assert counted.params == nbytes(state.params)
    assert counted.optimizer == nbytes(state.opt_state)
    trained = [p for name, p in tree.to_dotted(state.params).items()
               if setup.trainable is None or name in setup.trainable]  # fmt: skip
    assert counted.grads == sum(p.numel() * 4 for p in trained)
    assert counted.params + counted.optimizer + counted.other == nbytes(tuple(state))


# (layers, width, block, batch, budget as a share of the way from the state to a whole-batch
# step without checkpointing): shares below 1 force accumulation or checkpointing.
GRID = [(2, 64, 64, 8, 0.3), (2, 64, 64, 8, 0.7), (3, 96, 32, 6, 0.5), (1, 128, 64, 4, 0.2),
        (2, 48, 128, 12, 1.2)]  # fmt: skip


@pytest.mark.parametrize(("layers", "width", "block", "batch", "share"), GRID)
def test_the_planned_step_stays_under_its_budget(
    tmp_path: Path, layers: int, width: int, block: int, batch: int, share: float
) -> None:
    """The analytic plan alone (no probe) is measured in a step of its own: it must fit."""
    configs, task = open_run(tmp_path, gpt(layers, width, block, batch))
    setup = make_setup(configs, task, seed=0)
    planner = memory._Planner(setup, (block,), batch, CPU)
    low = planner.estimate(planner.smallest())
    high = planner.estimate(memory._Option(batch, False))
    budget_mb = round((low + share * (high - low)) / memory.MIB, 1)
    configs["TrainConfig"] = memory._revalidate(configs["TrainConfig"], memory_budget_mb=budget_mb)
    planned, plan = memory.plan_run(configs, task, device=CPU, probe=False)
    assert plan is not None and plan.measured_mb is None
    assert batch % plan.micro_batch == 0 and plan.micro_batch * plan.accum_steps == batch
    assert planned["TrainConfig"].accum_steps == plan.accum_steps
    assert planned["GPTConfig"].remat == plan.remat
    assert plan.estimated_mb is not None and plan.estimated_mb <= budget_mb
    if share >= 1:
        assert (plan.micro_batch, plan.remat) == (batch, False)
    assert measured_step_mib(planned, task) <= budget_mb


def test_a_probe_checks_the_plan(tmp_path: Path) -> None:
    configs, task = open_run(tmp_path, gpt(2, 64, 64, 8, "TrainConfig.memory_budget_mb = 7\n"))
    _, plan = memory.plan_run(configs, task, device=CPU)
    assert plan is not None and plan.measured_mb is not None
    assert plan.measured_mb <= 7 and plan.estimated_mb is not None
    assert plan.describe().startswith(f"craft: memory plan for 7 MiB: {plan.settings()}; est")
    assert "probe step measured" in plan.describe()


def test_too_small_a_budget_names_the_smallest_that_fits(tmp_path: Path) -> None:
    configs, task = open_run(tmp_path, gpt(2, 64, 64, 8, "TrainConfig.memory_budget_mb = 1\n"))
    with pytest.raises(ConfigError) as refused:
        memory.plan_run(configs, task, device=CPU)
    message = str(refused.value)
    assert message.startswith(
        "TrainConfig.memory_budget_mb = 1 cannot hold this run: params, gradients and AdamW "
        "state alone take 2 MiB; the smallest budget that fits is "
    )
    assert message.endswith(" MiB (micro-batch 1, activation checkpointing on)")
    smallest = int(re.search(r"fits is (\d+) MiB", message).group(1))  # type: ignore[union-attr]
    configs["TrainConfig"] = memory._revalidate(configs["TrainConfig"], memory_budget_mb=smallest)
    planned, plan = memory.plan_run(configs, task, device=CPU)
    assert plan is not None and plan.micro_batch * plan.accum_steps == 8
    # The probe measured below the estimate, so it may have admitted a faster plan: it then
    # measured that one too.
    assert plan.estimated_mb is not None
    assert plan.micro_batch == 1 or plan.estimated_mb > smallest
    assert plan.measured_mb is not None and plan.measured_mb <= smallest
    assert measured_step_mib(planned, task) <= smallest


def test_settings_given_are_kept_and_checked(tmp_path: Path) -> None:
    given = "TrainConfig.accum_steps = 2\nGPTConfig.remat = False\n"
    configs, task = open_run(
        tmp_path, gpt(2, 64, 64, 8, given + "TrainConfig.memory_budget_mb = 50\n")
    )
    _, plan = memory.plan_run(configs, task, device=CPU, probe=False)
    assert plan is not None and (plan.micro_batch, plan.accum_steps, plan.remat) == (4, 2, False)
    assert "(TrainConfig.accum_steps = 2 and GPTConfig.remat = False as given)" in plan.describe()
    configs["TrainConfig"] = memory._revalidate(configs["TrainConfig"], memory_budget_mb=4)
    with pytest.raises(ConfigError, match="as given fix the plan: leave them unset"):
        memory.plan_run(configs, task, device=CPU, probe=False)


def test_without_a_budget_nothing_is_planned(tmp_path: Path) -> None:
    configs, task = open_run(tmp_path, gpt(1, 32, 16, 4))
    assert memory.plan_run(configs, task, device=CPU) == (configs, None)
    assert memory.show_plan(configs) == []


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ValidationError, match="memory_budget_mb"):
        TrainConfig(memory_budget_mb=0)


def test_show_config_prints_the_plan(run_cli: CliRunner) -> None:
    """Needs craft/main.py's show_config to print `memory.show_plan(configs)`."""
    repo = Path(__file__).resolve().parent.parent
    flags = ["--gin.GPTConfig.vocab_size=76", "--gin.GPTConfig.n_layer=2",
             "--gin.GPTConfig.n_embd=64", "--gin.GPTConfig.block_size=64"]  # fmt: skip
    shown = run_cli("show_config", *flags, "--gin.TrainConfig.memory_budget_mb=64", cwd=repo)
    assert shown.returncode == 0, shown.stderr
    assert "TrainConfig.memory_budget_mb = 64.0" in shown.stdout
    assert "# memory plan for 64 MiB: micro-batch 12 x 1 accumulation step" in shown.stdout
    refused = run_cli("show_config", *flags, "--gin.TrainConfig.memory_budget_mb=1", cwd=repo)
    assert refused.returncode == 2
    assert "TrainConfig.memory_budget_mb = 1 cannot hold this run" in refused.stderr
    assert "the smallest budget that fits is" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_run_trains_and_records_the_plan(run_cli: CliRunner, tmp_path: Path) -> None:
    text = tmp_path / "tiny.txt"
    text.write_text(TEXT)
    result = run_cli(
        f"--gin.DataConfig.source={text}", "--gin.RunConfig.name=tiny",
        "--gin.TrainConfig.memory_budget_mb=6", "--gin.TrainConfig.steps=2",
        "--gin.TrainConfig.compile=False", "--gin.TextSampleConfig.tokens=5",
        "--gin.MetricsConfig.wandb=disabled", "--gin.GPTConfig.n_layer=1",
        "--gin.GPTConfig.n_embd=16", "--gin.GPTConfig.n_head=2", "--gin.Schedule.warmup_steps=1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    line = next(s for s in result.stdout.splitlines() if s.startswith("craft: memory plan"))
    found = re.search(r"micro-batch (\d+) x (\d+) accumulation", line)
    assert found is not None and int(found[1]) * int(found[2]) == 12 and int(found[2]) > 1
    assert "probe step measured" in line
    [run_dir] = list((tmp_path / "outputs/experiments/tiny").glob("*/*"))
    recorded = (run_dir / "config.gin").read_text()
    assert f"TrainConfig.accum_steps = {found[2]}\n" in recorded
    assert "TrainConfig.memory_budget_mb = 6.0\n" in recorded
    assert f"GPTConfig.remat = {'activation checkpointing on' in line}\n" in recorded
