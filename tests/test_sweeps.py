"""Sweeps: the laws of the search space, the messages for bad flags, every run validated before
any starts, and sweeps through the command line on a tiny text config (the runs, the report, a
failing run, resuming), `run --run_dir`, and the W&B group a sweep gives its runs."""

from __future__ import annotations

import ast
import csv
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from craft import config
from craft.errors import ConfigError
from craft.main import main
from craft.sweeps import engine
from craft.sweeps.engine import ERROR_LINES
from craft.sweeps.manifest import Manifest
from craft.sweeps.space import expand, parse_grid, parse_range, split_top_level
from craft.tracking import MetricsConfig, WandbTracker, make_trackers
from craft.train.hooks import RunInfo
from tests.conftest import REPO, CliRunner

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT = "".join(f"SPEAKER_{i % 5}: words of line {i}.\n" for i in range(300))
# 4 steps of a 1-layer, 16-wide GPT on characters: a checkpoint and a val loss at steps 2 and 4.
TINY = """
RunConfig.name = 'tiny'
DataConfig.source = '{source}'
DataConfig.tokenizer = 'char'
DataConfig.window = 8
GPTConfig.n_layer = 1
GPTConfig.n_head = 2
GPTConfig.n_embd = 16
TrainConfig.steps = 4
TrainConfig.batch_size = 4
TrainConfig.eval_every = 2
TrainConfig.checkpoint_every = 2
TrainConfig.sample_every = 0
TrainConfig.compile = False
MetricsConfig.progress_bar = False
MetricsConfig.wandb = 'disabled'
Schedule.warmup_steps = 1
Schedule.total_steps = 4
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, craft_configs_only: None) -> Path:
    """`tiny.gin` and its text in `tmp_path`, the working folder of in-process and CLI calls."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.txt").write_text(TEXT)
    (tmp_path / "tiny.gin").write_text(TINY.format(source=tmp_path / "tiny.txt"))
    return tmp_path


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`python -m craft.main ARGS`, in this process: (exit code, stdout, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def the_sweep(root: Path, name: str = "tiny") -> Path:
    [sweep_dir] = list((root / "outputs/sweeps" / name).glob("*/*"))
    return sweep_dir


def commands(sweep_dir: Path, label: str) -> list[str]:
    """The command lines a run's log records: one per time the sweep started the run."""
    log = (sweep_dir / "logs" / f"{label}.log").read_text()
    return [line for line in log.splitlines() if line.startswith("$ ")]


def csv_rows(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "summary.csv", newline="") as file:
        return list(csv.DictReader(file))


def summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


# --- the space: laws -------------------------------------------------------------------------

GRIDS = st.lists(
    st.lists(st.integers(-99, 99), min_size=1, max_size=4, unique=True), min_size=1, max_size=3
)
SEEDS = st.integers(0, 2**32)


def grid_flags(value_lists: list[list[int]]) -> list[str]:
    return [f"Axis{i}.field={','.join(map(str, values))}" for i, values in enumerate(value_lists)]


@settings(max_examples=60, deadline=None)
@given(GRIDS, SEEDS)
def test_grid_runs_every_combination_once_first_flag_slowest(
    value_lists: list[list[int]], seed: int
) -> None:
    runs = expand([parse_grid(flag) for flag in grid_flags(value_lists)], [], None, seed)
    keys = [f"Axis{i}.field" for i in range(len(value_lists))]
    assert len(runs) == math.prod(len(values) for values in value_lists)
    assert all(list(run) == keys for run in runs)  # bound in flag order
    points = [tuple(int(run[key]) for key in keys) for run in runs]
    assert len(set(points)) == len(points)
    assert set(points) == set(itertools.product(*value_lists))
    # In order of the values' positions, the first flag's first: it varies slowest.
    positions = [tuple(map(list.index, value_lists, p)) for p in points]
    assert positions == sorted(positions)
    block = len(runs) // len(value_lists[0])
    assert [p[0] for p in points] == [v for v in value_lists[0] for _ in range(block)]


@settings(max_examples=40, deadline=None)
@given(GRIDS, st.integers(1, 4), SEEDS)
def test_each_grid_point_gets_the_same_draws(
    value_lists: list[list[int]], draws: int, seed: int
) -> None:
    axes = [parse_grid(flag) for flag in grid_flags(value_lists)]
    ranges = [parse_range("Schedule.peak_lr=loguniform(1e-4,1e-2)")]
    runs = expand(axes, ranges, draws, seed)
    points = math.prod(len(values) for values in value_lists)
    assert len(runs) == points * draws
    drawn = [run["Schedule.peak_lr"] for run in runs[:draws]]
    for start in range(0, len(runs), draws):
        block = runs[start : start + draws]
        assert [run["Schedule.peak_lr"] for run in block] == drawn
        assert len({tuple(run[a.key] for a in axes) for run in block}) == 1


def finite(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


MEMBERS = st.integers(-(10**6), 10**6) | finite(-1e6, 1e6) | st.text("abc ,()", min_size=1)


def two(values: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """Two different values, low first."""
    return st.lists(values, min_size=2, max_size=2, unique=True).map(sorted)


def near(values: st.SearchStrategy[float], apart: Any) -> st.SearchStrategy[list[float]]:
    """Bounds a little apart (closer than 4 significant digits can tell), or far."""
    gaps = st.floats(1e-12, 1e-3)
    close = st.builds(apart, values, gaps).filter(lambda pair: pair[0] < pair[1])
    return close | two(values)


@st.composite
def ranges(draw: st.DrawFn) -> tuple[str, str, tuple[Any, ...]]:
    """(flag, kind, args): any distribution with any valid bounds."""
    kind = draw(st.sampled_from(["loguniform", "uniform", "int", "choice"]))
    if kind == "choice":
        members = draw(st.lists(MEMBERS, min_size=1, max_size=5, unique=True))
        return f"A.b=choice({','.join(map(repr, members))})", kind, tuple(members)
    if kind == "int":
        low, high = draw(two(st.integers(-(10**6), 10**6)))
    elif kind == "uniform":
        values = finite(-1e6, 1e6)
        low, high = draw(near(values, lambda low, gap: [low, low + gap * max(abs(low), 1)]))
    else:
        values = finite(1e-30, 1e30)
        low, high = draw(near(values, lambda low, gap: [low, low * (1 + gap)]))
    return f"A.b={kind}({low!r},{high!r})", kind, (low, high)


@settings(max_examples=200, deadline=None)
@given(ranges(), SEEDS)
def test_draws_lie_inside_the_bounds_and_repeat_with_the_seed(
    spec: tuple[str, str, tuple[Any, ...]], seed: int
) -> None:
    flag, kind, args = spec
    runs = expand([], [parse_range(flag)], 12, seed)
    assert runs == expand([], [parse_range(flag)], 12, seed)  # the same seed, the same draws
    values = [ast.literal_eval(run["A.b"]) for run in runs]
    if kind == "choice":
        assert all(value in args for value in values)
    else:
        low, high = args
        assert all(low <= value <= high for value in values), (values, args)
        assert all(isinstance(value, int if kind == "int" else float) for value in values)


@settings(max_examples=50, deadline=None)
@given(st.integers(-1000, 1000), SEEDS)
def test_int_draws_include_both_ends(low: int, seed: int) -> None:
    runs = expand([], [parse_range(f"A.b=int({low},{low + 1})")], 64, seed)
    assert {int(run["A.b"]) for run in runs} == {low, low + 1}


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["uniform", "loguniform"]), st.floats(1e-6, 1e6), st.floats(1.1, 1e3),
       SEEDS, SEEDS)  # fmt: skip
def test_different_seeds_draw_differently(
    kind: str, low: float, ratio: float, seed: int, other: int
) -> None:
    """For a range wide enough that the 4 significant digits kept tell draws apart."""
    flag = f"A.b={kind}({low!r},{low * ratio!r})"
    first = expand([], [parse_range(flag)], 8, seed)
    if seed != other:
        assert expand([], [parse_range(flag)], 8, other) != first


ATOMS = st.from_regex(r"[A-Za-z0-9_.@%\-]{1,6}", fullmatch=True)
QUOTES = st.sampled_from(["'", '"'])
QUOTED = st.builds(lambda q, inner: q + inner + q, QUOTES, st.text(",()[]{} ab", max_size=6))
BRACKETS = st.sampled_from(["()", "[]", "{}"])


def bracketed(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """`(a,b)`, `[a]`, `{}`: a bracket pair around comma-separated items."""
    parts = st.lists(inner, max_size=3)
    return st.builds(lambda pair, items: pair[0] + ",".join(items) + pair[1], BRACKETS, parts)


ITEMS = st.recursive(ATOMS | QUOTED, bracketed, max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(st.lists(ITEMS, min_size=1, max_size=5), st.sampled_from([",", ", ", " ,  "]))
def test_split_top_level_keeps_brackets_and_quotes_together(
    items: list[str], separator: str
) -> None:
    assert split_top_level(separator.join(items)) == items


def test_split_top_level_examples() -> None:
    assert split_top_level("1,(2,3),'a,b'") == ["1", "(2,3)", "'a,b'"]
    assert split_top_level('[1, [2, 3]], "x,)"') == ["[1, [2, 3]]", '"x,)"']
    assert split_top_level("") == []


# --- bad flags: the messages -----------------------------------------------------------------


RESUMED = (
    "a resumed sweep runs the configs, grid and draws it was started with: leave out "
    "--grid, --range, --random and gin params (--gin.X=..., --gin_param)"
)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--grid=Schedule.peak_lr"], "--grid='Schedule.peak_lr': expected Name.field=..."),
        (["--grid=peak_lr=1e-3,3e-3"],
         "--grid=peak_lr=1e-3,3e-3: 'peak_lr' is not a binding name like Schedule.peak_lr"),
        (["--grid=Schedule.peak_lr="],
         "--grid=Schedule.peak_lr=: give the values after '=', separated by commas"),
        (["--grid=Schedule.peak_lr=1e-3,,3e-3"],
         "--grid=Schedule.peak_lr=1e-3,,3e-3: give the values after '=', separated by commas"),
        (["--grid=Schedule.peak_lr=1e-3,1e-3"],
         "--grid=Schedule.peak_lr=1e-3,1e-3: a value appears twice"),
        (["--grid=Schedule.peak_lr=1e-3,3e-3 x"],
         "--grid=Schedule.peak_lr=1e-3,3e-3 x: cannot read the value '3e-3 x'"),
        (["--grid=Schedule.peak_lr=(1e-3,3e-3"], "unbalanced brackets or quotes in '(1e-3,3e-3'"),
        (["--random=2", "--range=Schedule.peak_lr=normal(0,1)"],
         "--range=Schedule.peak_lr=normal(0,1): expected one of loguniform(...), uniform(...), "
         "int(...), choice(...)"),
        (["--random=2", "--range=Schedule.peak_lr=uniform(1e-3)"],
         "--range=Schedule.peak_lr=uniform(1e-3): uniform takes two bounds, low and high"),
        (["--random=2", "--range=Schedule.peak_lr=uniform(3e-3,1e-3)"],
         "--range=Schedule.peak_lr=uniform(3e-3,1e-3): the low bound must be below the high one"),
        (["--random=2", "--range=Schedule.peak_lr=int(2,2)"],
         "--range=Schedule.peak_lr=int(2,2): the low bound must be below the high one"),
        (["--random=2", "--range=Schedule.peak_lr=loguniform(0,1e-2)"],
         "--range=Schedule.peak_lr=loguniform(0,1e-2): loguniform needs a positive low bound"),
        (["--random=2", "--range=Schedule.peak_lr=loguniform(-1,1e-2)"],
         "--range=Schedule.peak_lr=loguniform(-1,1e-2): loguniform needs a positive low bound"),
        (["--random=2", "--range=TrainConfig.batch_size=int(2,8.5)"],
         "--range=TrainConfig.batch_size=int(2,8.5): int takes whole-number bounds"),
        (["--random=2", "--range=Schedule.peak_lr=uniform(low,1)"],
         "--range=Schedule.peak_lr=uniform(low,1): 'low' is not a number"),
        (["--random=2", "--range=GPTConfig.activation=choice()"],
         "--range=GPTConfig.activation=choice(): choice needs at least one value"),
        (["--range=Schedule.peak_lr=loguniform(1e-4,1e-2)"],
         "--range needs --random=N: how many draws to make"),
        (["--grid=Schedule.peak_lr=1e-3,3e-3", "--random=4"],
         "--random=N needs at least one --range to draw from"),
        (["--random=0", "--range=Schedule.peak_lr=loguniform(1e-4,1e-2)"],
         "--random must be a whole number >= 1, got 0"),
        (["--grid=Schedule.peak_lr=1e-3,3e-3", "--grid=Schedule.peak_lr=1e-2"],
         "a sweep binds Schedule.peak_lr more than once"),
        (["--grid=Schedule.peak_lr=1e-3,3e-3", "--random=2",
          "--range=Schedule.peak_lr=loguniform(1e-4,1e-2)"],
         "a sweep binds Schedule.peak_lr more than once"),
        ([], "a sweep needs --grid=Name.field=v1,v2 or --random=N with --range"),
        (["--grid"], "--grid needs a value"),
        (["--grid=Schedule.peak_lr=1e-3,3e-3", "--parallel=0"],
         "--parallel must be a whole number >= 1, got 0"),
        (["--grid=Schedule.peak_lr=1e-3,3e-3", "--seed=-1"],
         "--seed must be a whole number >= 0, got -1"),
        (["--resume=latest", "--grid=Schedule.peak_lr=1e-3,3e-3"], RESUMED),
        (["--resume=latest", "--gin.TrainConfig.steps=8"], RESUMED),
        (["--grid=Schedule.peak_lr=1e-3,0.001"],
         "--grid=Schedule.peak_lr=1e-3,0.001: a value appears twice"),
        (["--grid=Schedule.peak_lr={[1]:2}"],
         "--grid=Schedule.peak_lr={[1]:2}: cannot read the value '{[1]:2}'"),
        (["--grid=Schedule.peak_lr=1e-3", "--name=my sweep"],
         "RunConfig.name = 'my sweep' (flag --name): String should match pattern '^[\\w.-]+$'"),
        (["--grid=Schedule.peak_lr=1e-3", "--output_dir"],
         "RunConfig.output_dir = True (flag --output_dir): Input should be a valid string"),
        (["--resume=latest"], "--resume=latest: no sweep named 'tiny' in outputs/sweeps/tiny"),
        (["--resume=tiny.txt"], "tiny.txt is not a sweep folder: it has no sweep.json"),
    ],
)  # fmt: skip
def test_bad_sweep_flags_are_refused_before_any_folder(
    workdir: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    code, _, err = in_process(capsys, "sweep", "--gin_file=tiny.gin", *flags)
    assert code == 2
    assert err == f"craft: error: {message}\n"
    assert not (workdir / "outputs").exists() and not (workdir / "data").exists()


def test_grid_is_a_sweep_flag_only_and_report_needs_a_sweep(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = in_process(capsys, "run", "--grid=Schedule.peak_lr=1e-3,3e-3")
    assert code == 2 and "craft: error: run takes no flag --grid" in err
    code, _, err = in_process(capsys, "report", "--sweep=nowhere")
    assert code == 2
    assert err == "craft: error: nowhere is not a sweep folder: it has no sweep.json\n"
    (workdir / "damaged").mkdir()
    (workdir / "damaged/sweep.json").write_text('{"name": "tiny", "runs": [')
    code, _, err = in_process(capsys, "report", "--sweep=damaged")
    assert code == 2 and err.startswith("craft: error: damaged/sweep.json is damaged: ")


def test_run_labels_name_the_index_and_each_swept_value() -> None:
    axes = [parse_grid("GPTConfig.activation=gelu,'relu'")]
    drawn = [parse_range("Schedule.peak_lr=loguniform(1e-4,1e-2)")]
    runs = engine.plan("tiny", [], [], expand(axes, drawn, 6, 0), {}).runs
    assert len({run.label for run in runs}) == 12
    for index, run in enumerate(runs):
        activation = "gelu" if index < 6 else "relu"
        lr = run.bindings["Schedule.peak_lr"]
        assert run.label == f"{index:02d}_activation-{activation}_peak_lr-{lr}"
        assert 1e-4 <= float(lr) <= 1e-2


# --- validation of every run, before any starts ----------------------------------------------


@pytest.mark.parametrize(
    ("grid", "bad_run", "single"),
    [
        ("Schedule.peak_lrr=1e-3,3e-3", "0_peak_lrr-1e-3", "--gin.Schedule.peak_lrr=1e-3"),
        ("TrainConfig.batch_size=0,4", "0_batch_size-0", "--gin.TrainConfig.batch_size=0"),
        (
            "TrainConfig.hooks=['no_such_module.Hook'],[]",
            "0_hooks-no_such_module.Hook",
            "--gin.TrainConfig.hooks=['no_such_module.Hook']",
        ),
    ],
)
def test_a_bad_binding_fails_the_sweep_before_any_run_with_the_runs_message(
    workdir: Path, run_cli: CliRunner, capsys: pytest.CaptureFixture[str], grid: str,
    bad_run: str, single: str,
) -> None:  # fmt: skip
    code, _, err = in_process(capsys, "run", "--gin_file=tiny.gin", single)
    assert code == 2
    own_message = err.removeprefix("craft: error: ").strip()
    assert own_message and "craft: error:" not in own_message

    result = run_cli("sweep", "--gin_file=tiny.gin", f"--grid={grid}", "--parallel=2")
    assert result.returncode == 2
    assert f"run {bad_run}: {own_message}" in result.stderr
    if not grid.startswith("Schedule"):  # the second value is fine: only run 0 is named
        assert "every run" not in result.stderr and "run 1_" not in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "outputs").exists() and not (workdir / "data").exists()


def test_a_schedule_longer_than_its_run_fails_the_sweep_before_any_run(
    workdir: Path, run_cli: CliRunner
) -> None:
    """Across configs: a warmup longer than the run (Schedule.total_steps unset) is found too."""
    text = (workdir / "tiny.gin").read_text().replace("Schedule.total_steps = 4\n", "")
    (workdir / "open.gin").write_text(text)
    result = run_cli("sweep", "--gin_file=open.gin", "--grid=Schedule.warmup_steps=1,10")
    assert result.returncode == 2
    assert (
        "run 1_warmup_steps-10: Schedule.warmup_steps = 10 exceeds the run's 4 steps "
        "(TrainConfig.steps, which Schedule.total_steps follows when unset)"
    ) in result.stderr
    assert "run 0_" not in result.stderr and not (workdir / "outputs").exists()


# --- sweeps through the command line ---------------------------------------------------------

LABELS = [
    "0_peak_lr-1e-3_dropout-0.0", "1_peak_lr-1e-3_dropout-0.1",
    "2_peak_lr-3e-3_dropout-0.0", "3_peak_lr-3e-3_dropout-0.1",
]  # fmt: skip


def test_a_2x2_sweep_runs_reports_and_resumes_only_what_is_unfinished(
    workdir: Path, run_cli: CliRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_cli(
        "sweep", "--gin_file=tiny.gin", "--grid=Schedule.peak_lr=1e-3,3e-3",
        "--grid", "GPTConfig.dropout=0.0,0.1", "--parallel=2",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    sweep_dir = the_sweep(workdir)
    assert "4 runs; 2 at a time" in result.stdout and "sweep: [4/4] " in result.stdout
    manifest = Manifest.load(sweep_dir)
    assert [run.label for run in manifest.runs] == LABELS
    assert [run.bindings for run in manifest.runs] == [
        {"Schedule.peak_lr": lr, "GPTConfig.dropout": dropout}
        for lr in ("1e-3", "3e-3")
        for dropout in ("0.0", "0.1")
    ]
    assert [(run.status, run.exit_code) for run in manifest.runs] == [("finished", 0)] * 4
    group = f"tiny/{sweep_dir.parent.name}/{sweep_dir.name}"
    for run in manifest.runs:
        gin = (sweep_dir / run.label / "config.gin").read_text()
        assert f"Schedule.peak_lr = {float(run.bindings['Schedule.peak_lr'])!r}\n" in gin
        assert f"GPTConfig.dropout = {float(run.bindings['GPTConfig.dropout'])!r}\n" in gin
        assert f"MetricsConfig.wandb_group = '{group}'\n" in gin
        done = summary(sweep_dir / run.label)
        assert (done["status"], done["steps"]) == ("finished", 4)
    rows = csv_rows(sweep_dir)
    assert [(r["run"], r["Schedule.peak_lr"], r["GPTConfig.dropout"], r["status"], r["steps"])
            for r in rows] == [
        (label, lr, dropout, "finished", "4")
        for label, (lr, dropout) in zip(
            LABELS, itertools.product(("1e-3", "3e-3"), ("0.0", "0.1")), strict=True
        )
    ]  # fmt: skip
    assert all(float(r["final_val_loss"]) > 0 and float(r["best_val_loss"]) > 0 for r in rows)
    markdown = (sweep_dir / "summary.md").read_text()
    assert "Runs: 4: 4 finished." in markdown and "Best (lowest val loss): **" in markdown
    assert all(f"| {label} |" in markdown or f"| **{label}** |" in markdown for label in LABELS)
    assert (sweep_dir / "curves.png").read_bytes().startswith(PNG_SIGNATURE)

    # `report` writes the same files again from the sweep folder.
    written = {name: (sweep_dir / name).read_bytes() for name in ("summary.md", "summary.csv")}
    for name in ("summary.md", "summary.csv", "curves.png"):
        (sweep_dir / name).unlink()
    relative = sweep_dir.relative_to(workdir)  # as the sweep named it
    code, out, err = in_process(capsys, "report", f"--sweep={relative}")
    assert code == 0, err
    assert out.split() == [str(relative / n) for n in ("summary.csv", "summary.md", "curves.png")]
    assert {name: (sweep_dir / name).read_bytes() for name in written} == written
    assert (sweep_dir / "curves.png").read_bytes().startswith(PNG_SIGNATURE)

    # Run 1 never started; run 2 stopped after its step-2 checkpoint.
    raw = json.loads((sweep_dir / "sweep.json").read_text())
    raw["runs"][1].update(status="pending", exit_code=None)
    raw["runs"][2].update(status="interrupted", exit_code=130)
    (sweep_dir / "sweep.json").write_text(json.dumps(raw))
    shutil.rmtree(sweep_dir / LABELS[1])
    (sweep_dir / LABELS[2] / "summary.json").unlink()
    (sweep_dir / LABELS[2] / "checkpoints/step-00000004.safetensors").unlink()
    finished = {label: (sweep_dir / label / "summary.json").stat().st_mtime_ns
                for label in (LABELS[0], LABELS[3])}  # fmt: skip

    resumed = run_cli("sweep", "--resume=latest", "--gin_file=tiny.gin", "--parallel=2")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "4 runs, 2 already finished; 2 at a time" in resumed.stdout
    for label, mtime in finished.items():  # skipped: not run again, not touched
        assert (sweep_dir / label / "summary.json").stat().st_mtime_ns == mtime
        assert len(commands(sweep_dir, label)) == 1
    [_, again] = commands(sweep_dir, LABELS[1])
    assert f" --run_dir={relative / LABELS[1]} " in again  # started afresh
    [_, again] = commands(sweep_dir, LABELS[2])
    assert f" --resume={relative / LABELS[2]} " in again  # continued from its checkpoint
    assert summary(sweep_dir / LABELS[1])["start_step"] == 0
    continued = summary(sweep_dir / LABELS[2])
    assert (continued["status"], continued["start_step"], continued["steps"]) == ("finished", 2, 4)
    assert [run.status for run in Manifest.load(sweep_dir).runs] == ["finished"] * 4
    assert [row["status"] for row in csv_rows(sweep_dir)] == ["finished"] * 4


def test_a_failing_run_is_recorded_and_the_others_finish(workdir: Path, run_cli: CliRunner) -> None:
    """A window longer than the val split passes validation (the config cannot know the data's
    size) and fails in the run, when the data is prepared."""
    result = run_cli(
        "sweep", "--gin_file=tiny.gin", "--grid=DataConfig.window=8,1000", "--parallel=2",
        "--name=windows",
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    sweep_dir = the_sweep(workdir, "windows")
    cause = "fewer than one window (window=1000, plus one target token)"
    assert "sweep: 1 of 2 runs failed: 1_window-1000" in result.stdout
    assert "1_window-1000 failed in" in result.stdout and cause in result.stdout
    assert f"log: {sweep_dir.relative_to(workdir)}/logs/1_window-1000.log)" in result.stdout
    ok, failed = Manifest.load(sweep_dir).runs
    assert (ok.label, ok.status, ok.exit_code, ok.error) == ("0_window-8", "finished", 0, None)
    assert (failed.label, failed.status, failed.exit_code) == ("1_window-1000", "failed", 1)
    assert failed.error is not None and cause in failed.error.splitlines()[-1]
    assert len(failed.error.splitlines()) <= ERROR_LINES
    assert summary(sweep_dir / "0_window-8")["status"] == "finished"
    rows = csv_rows(sweep_dir)
    assert [(r["run"], r["DataConfig.window"], r["status"]) for r in rows] == [
        ("0_window-8", "8", "finished"), ("1_window-1000", "1000", "failed")
    ]  # fmt: skip
    assert rows[1]["steps"] == "" and rows[1]["final_val_loss"] == ""
    markdown = (sweep_dir / "summary.md").read_text()
    assert "Runs: 2: 1 finished, 1 failed." in markdown
    assert "1_window-1000 failed (exit 1):" in markdown and cause in markdown

    # Resumed: the failed run runs again (and fails again); the finished one is skipped.
    mtime = (sweep_dir / "0_window-8" / "summary.json").stat().st_mtime_ns
    again = run_cli("sweep", f"--resume={sweep_dir}", "--parallel=2")
    assert again.returncode == 1
    assert "2 runs, 1 already finished" in again.stdout
    assert "sweep: 1 of 2 runs failed: 1_window-1000" in again.stdout
    assert (sweep_dir / "0_window-8" / "summary.json").stat().st_mtime_ns == mtime
    assert len(commands(sweep_dir, "0_window-8")) == 1
    assert len(commands(sweep_dir, "1_window-1000")) == 2


LONG = ("--gin.TrainConfig.steps=100000", "--gin.Schedule.total_steps=100000",
        "--gin.TrainConfig.checkpoint_every=50", "--gin.TrainConfig.eval_every=50")  # fmt: skip


def test_a_run_past_its_time_limit_saves_is_marked_stopped_and_resumes(
    workdir: Path, run_cli: CliRunner
) -> None:
    """A run that never ends is stopped by a SIGTERM at the limit, saves the step it reached,
    and is marked stopped (not failed; the sweep exits 1); --resume continues it from that
    checkpoint, under the limit the sweep was started with."""
    result = run_cli("sweep", "--gin_file=tiny.gin", "--grid=Schedule.peak_lr=1e-3",
                     "--run_limit_s=20", *LONG)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    sweep_dir = the_sweep(workdir)
    assert "0_peak_lr-1e-3 stopped in" in result.stdout and "(its time limit)" in result.stdout
    [run] = Manifest.load(sweep_dir).runs
    assert run.status == "stopped" and run.exit_code == 143
    assert run.error == "stopped at its time limit (20 s) after a save; --resume continues it"
    first = summary(sweep_dir / run.label)
    assert first["status"] == "terminated" and first["steps"] > 0
    # The save at the stop: the newest checkpoint is the step the run reached.
    assert first["checkpoint"].endswith(f"step-{first['steps']:08d}.safetensors")
    assert Path(first["checkpoint"]).is_file()
    assert "Runs: 1: 1 stopped." in (sweep_dir / "summary.md").read_text()

    again = run_cli("sweep", f"--resume={sweep_dir}")
    assert again.returncode == 1, again.stdout + again.stderr
    second = summary(sweep_dir / run.label)
    assert second["start_step"] == first["steps"] and second["steps"] > first["steps"]
    assert commands(sweep_dir, run.label)[1].count(f"--resume={sweep_dir / run.label}") == 1
    assert "time limit (20 s)" in (Manifest.load(sweep_dir).runs[0].error or "")

    bad = run_cli("sweep", "--gin_file=tiny.gin", "--grid=Schedule.peak_lr=1e-3",
                  "--run_limit_s=0")  # fmt: skip
    assert bad.returncode == 2
    assert "--run_limit_s must be a number of seconds > 0, got 0" in bad.stderr


def test_a_sweep_folder_runs_in_one_process_at_a_time(workdir: Path, run_cli: CliRunner) -> None:
    """While one process holds a sweep, a second one is refused (and deletes nothing)."""
    import fcntl

    first = run_cli("sweep", "--gin_file=tiny.gin", "--grid=Schedule.peak_lr=1e-3")
    assert first.returncode == 0, first.stdout + first.stderr
    sweep_dir = the_sweep(workdir)
    (sweep_dir / "sweep.json").write_text(
        (sweep_dir / "sweep.json").read_text().replace('"finished"', '"pending"')
    )
    with open(sweep_dir / "sweep.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused = run_cli("sweep", f"--resume={sweep_dir}")
    assert refused.returncode == 2
    assert (
        f"craft: error: {sweep_dir} is being run by another process (it "
        "holds sweep.lock): wait for it to end, or stop it first"
    ) in refused.stderr
    assert (sweep_dir / "0_peak_lr-1e-3" / "summary.json").is_file()


def test_a_sigterm_to_the_sweep_stops_its_runs_after_a_save(workdir: Path) -> None:
    """The runs are passed the SIGTERM: each saves and is marked interrupted; resumable."""
    process = subprocess.Popen(
        [sys.executable, "-m", "craft.main", "sweep", "--gin_file=tiny.gin",
         "--grid=Schedule.peak_lr=1e-3,3e-3", "--parallel=2", *LONG],
        cwd=workdir, env={**os.environ, "PYTHONPATH": str(REPO)}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        # Both runs under way: each has written its first checkpoint (counted per run: one
        # fast run can write two before the other starts).
        while (
            len({p.parent for p in workdir.glob("outputs/sweeps/tiny/*/*/*/checkpoints/step-*")})
            < 2
        ):
            assert time.monotonic() < deadline and process.poll() is None, "runs did not start"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, out + err
    runs = Manifest.load(the_sweep(workdir)).runs
    assert [run.status for run in runs] == ["interrupted", "interrupted"]
    for run in runs:
        assert summary(the_sweep(workdir) / run.label)["status"] == "terminated"


# --- run --run_dir ---------------------------------------------------------------------------


def test_run_dir_takes_a_new_or_empty_folder(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = workdir / "mine"
    target.mkdir()  # empty: accepted
    flags = ("--gin_file=tiny.gin", "--gin.TrainConfig.steps=2", "--gin.Schedule.total_steps=2")
    code, out, err = in_process(capsys, "run", f"--run_dir={target}", *flags)
    assert code == 0, err
    assert f"run folder: {target}" in out
    done = summary(target)
    assert (done["status"], done["steps"], done["run_dir"]) == ("finished", 2, str(target))
    assert "TrainConfig.steps = 2" in (target / "config.gin").read_text()
    assert (target / "checkpoints/step-00000002.safetensors").is_file()
    assert not (workdir / "outputs").exists()

    before = sorted(p.relative_to(target) for p in target.rglob("*"))
    code, _, err = in_process(capsys, "run", f"--run_dir={target}", *flags)
    assert code == 2
    assert err == (
        f"craft: error: --run_dir={target} already holds files: give a new folder, or continue "
        f"the run that is there with --resume={target}\n"
    )
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == before

    code, _, err = in_process(capsys, "run", "--run_dir=other", "--resume=latest", *flags)
    assert code == 2
    assert err == "craft: error: --run_dir is for a new run; a resumed run goes on in its own\n"
    assert not (workdir / "other").exists() and not (workdir / "outputs").exists()


# --- the W&B group ---------------------------------------------------------------------------


@pytest.mark.parametrize("group", ["tiny/2026-01-01/12-00-00", None])
def test_wandb_group_reaches_wandb_init(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, group: str | None
) -> None:
    import wandb

    calls: list[dict[str, Any]] = []

    class FakeRun:
        def log(self, values: dict[str, Any], step: int) -> None:
            pass

        def finish(self) -> None:
            pass

    def fake_init(**kwargs: Any) -> FakeRun:
        calls.append(kwargs)
        return FakeRun()

    monkeypatch.setattr(wandb, "init", fake_init)
    monkeypatch.setattr(wandb, "teardown", lambda: None)
    params = ["MetricsConfig.wandb = 'offline'", "MetricsConfig.progress_bar = False"]
    if group is not None:
        params.append(f"MetricsConfig.wandb_group = '{group}'")
    config.parse([], params)
    trackers = make_trackers(config.build(MetricsConfig), tmp_path, {}).trackers
    [tracker] = [t for t in trackers if isinstance(t, WandbTracker)]
    tracker.start(RunInfo(run_dir=tmp_path, total_steps=1, start_step=0, configs={}))
    tracker.finish()
    [call] = calls
    assert call["group"] == group
    assert call["mode"] == "offline" and call["project"] == "craft"


def test_an_empty_wandb_group_is_refused() -> None:
    config.parse([], ["MetricsConfig.wandb_group = ''"])
    with pytest.raises(ConfigError) as refused:
        config.build(MetricsConfig)
    assert "MetricsConfig.wandb_group = ''" in str(refused.value)
    assert "String should have at least 1 character" in str(refused.value)
