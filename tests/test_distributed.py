"""Data parallel: torchrun with gloo on the CPU, against one process with the whole batch."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from craft import distributed
from craft.errors import ConfigError
from tests import dist_worker
from tests.conftest import REPO


def test_one_process_without_torchrun() -> None:
    assert distributed.world_from_env({}) == distributed.World(rank=0, size=1, local_rank=0)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RANK": "0"}, "incomplete torchrun environment: RANK set but not WORLD_SIZE, LOCAL_RANK"),
        ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "inconsistent torchrun environment"),
        ({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "must be integers"),
    ],
)
def test_bad_environment_is_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        distributed.world_from_env(env)


def test_shard_takes_contiguous_slices() -> None:
    batch = {"inputs": torch.arange(8).reshape(4, 2)}
    parts = [distributed.shard(batch, distributed.World(rank=r, size=2))["inputs"] for r in (0, 1)]
    assert torch.equal(torch.cat(parts), batch["inputs"])
    with pytest.raises(ConfigError, match="global batch 4 does not split evenly over 3 ranks"):
        distributed.shard(batch, distributed.World(rank=0, size=3))


def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(REPO / "tests" / "dist_worker.py"), *args],
        capture_output=True, text=True, env=env, timeout=240, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("shard", "dropout"), [(False, 0.0), (True, 0.0), (True, 0.2)], ids=["dp", "sharded", "dropout"]
)
def test_two_ranks_equal_one_process_with_the_whole_batch(
    tmp_path: Path, shard: bool, dropout: float
) -> None:
    """With accumulation (2 micro-batches per rank) and clipping; dropout masks follow each
    row of the global batch, so they match too."""
    steps = 3
    options = ["--shard"] if shard else []
    result = torchrun(str(tmp_path), str(steps), f"--dropout={dropout}", *options)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = load_file(tmp_path / "rank0.safetensors")
    rank1 = load_file(tmp_path / "rank1.safetensors")
    single = dist_worker.train(distributed.World(), steps, dropout=dropout)
    for name, value in single.items():
        assert torch.equal(rank0[name], rank1[name]), name  # every rank holds the same params
        torch.testing.assert_close(rank0[name], value, atol=1e-6, rtol=0.0)


def test_sharded_adamw_equals_replicated_adamw(tmp_path: Path) -> None:
    """ZeRO-1 changes where the update runs, not what it computes: with AdamW, 2 ranks with the
    optimizer state sharded end where 2 ranks with it replicated do."""
    for name, options in (("sharded", ["--shard"]), ("replicated", [])):
        (tmp_path / name).mkdir()
        result = torchrun(str(tmp_path / name), "4", "--adamw", *options)
        assert result.returncode == 0, result.stderr[-3000:]
    sharded = load_file(tmp_path / "sharded" / "rank1.safetensors")
    replicated = load_file(tmp_path / "replicated" / "rank1.safetensors")
    assert set(sharded) == set(replicated)
    for name, value in replicated.items():
        torch.testing.assert_close(sharded[name], value, atol=1e-6, rtol=0.0)


@pytest.mark.parametrize(
    ("options", "sign"),
    [
        (["--dying=1"], "exitcode  : 17"),
        (["--dying=1", "--shard"], "exitcode  : 17"),
        # A silent rank: rank 0's collective gives up after the group timeout.
        (["--hanging=1", "--shard"], "Timed out waiting 20000ms"),
    ],
    ids=["dead", "dead-sharded", "hung-sharded"],
)
def test_a_dead_or_hung_rank_fails_the_run_within_the_timeout(
    tmp_path: Path, options: list[str], sign: str
) -> None:
    start = time.monotonic()
    result = torchrun(str(tmp_path), "5", *options)
    assert result.returncode != 0
    assert time.monotonic() - start < 120  # the process group timeout is 20 s
    assert sign in result.stderr
    assert not (tmp_path / "rank0.safetensors").exists()  # rank 0 did not finish silently


def write_tiny_gin(folder: Path, *, shard: bool, extra: str = "") -> None:
    """`tiny.gin`: a 1-layer GPT on a small text, 8 SGD steps of 4 sequences."""
    text = folder / "tiny.txt"
    text.write_text(
        "".join(f"SPEAKER_{i % 5}: words of line {i}, said plainly.\n" for i in range(400))
    )
    (folder / "tiny.gin").write_text(
        f"RunConfig.name = 'tiny'\nDataConfig.source = '{text}'\nDataConfig.window = 16\n"
        "GPTConfig.block_size = 16\nGPTConfig.n_layer = 1\nGPTConfig.n_head = 2\n"
        "GPTConfig.n_embd = 16\nTrainConfig.steps = 8\nTrainConfig.batch_size = 4\n"
        "TrainConfig.optimizer = 'sgd'\nTrainConfig.eval_every = 0\nTrainConfig.sample_every = 0\n"
        f"TrainConfig.shard_optimizer = {shard}\nTrainConfig.checkpoint_every = 4\n"
        "TrainConfig.compile = False\nMetricsConfig.wandb = 'disabled'\n"
        "MetricsConfig.progress_bar = False\nSchedule.kind = 'constant'\nSchedule.peak_lr = 0.1\n"
        + extra
    )


def craft_cli(folder: Path, *args: str, ranks: int = 1) -> subprocess.CompletedProcess[str]:
    """`python -m craft.main ARGS` in `folder`, under torchrun when `ranks` > 1."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    command = [sys.executable, *(launcher if ranks > 1 else []), "-m", "craft.main", *args]
    return subprocess.run(
        command, cwd=folder, env=env, capture_output=True, text=True, timeout=240, check=False
    )


@pytest.mark.parametrize(("first", "then", "shard"), [(2, 1, True), (1, 2, True), (2, 1, False)])
def test_checkpoints_move_between_world_sizes(
    tmp_path: Path, first: int, then: int, shard: bool
) -> None:
    """N ranks for 8 steps, then M ranks to 12 == 1 process for 12 steps (same global batch),
    the optimizer state sharded over the ranks or not; checkpoints always hold it whole.

    SGD with momentum: Adam's first steps turn rounding differences of near-zero gradients
    (the order of the cross-rank sums) into full-size updates, beyond 1e-6.
    """
    write_tiny_gin(tmp_path, shard=shard)

    def craft(*args: str, ranks: int = 1) -> subprocess.CompletedProcess[str]:
        return craft_cli(tmp_path, *args, ranks=ranks)

    started = craft("--gin_file=tiny.gin", ranks=first)
    assert started.returncode == 0, started.stderr[-3000:]
    [split_run] = list((tmp_path / "outputs/experiments/tiny").glob("*/*"))
    resumed = craft(
        "--gin_file=tiny.gin", "--gin.TrainConfig.steps=12", f"--resume={split_run}", ranks=then
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = craft("--gin_file=tiny.gin", "--gin.TrainConfig.steps=12")
    assert straight.returncode == 0, straight.stderr[-3000:]
    [straight_run] = [
        p for p in (tmp_path / "outputs/experiments/tiny").glob("*/*") if p != split_run
    ]
    a = load_file(split_run / "checkpoints/step-00000012.safetensors")
    b = load_file(straight_run / "checkpoints/step-00000012.safetensors")
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0.0)


def test_sigterm_on_one_rank_stops_every_rank_after_the_same_step(tmp_path: Path) -> None:
    """Rank 0 gets a SIGTERM during step 3; rank 1 learns of it through the ranks' agreement,
    so both stop after step 3 and the sharded optimizer state is gathered into a checkpoint
    that one process then resumes."""
    write_tiny_gin(
        tmp_path,
        shard=True,
        extra="TrainConfig.hooks = ['tests.hooks_for_tests.TerminateAtStep3']\n",
    )
    stopped = craft_cli(tmp_path, "--gin_file=tiny.gin", ranks=2)
    assert stopped.returncode != 0  # torchrun reports the ranks' 143 as a failure
    assert "status: terminated after 3 steps" in stopped.stdout, stopped.stderr[-3000:]
    [run_dir] = list((tmp_path / "outputs/experiments/tiny").glob("*/*"))
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.safetensors")) == [
        "step-00000003.safetensors"
    ]
    (tmp_path / "tiny.gin").write_text(
        (tmp_path / "tiny.gin").read_text().replace("TrainConfig.hooks", "# TrainConfig.hooks")
    )
    resumed = craft_cli(tmp_path, "--gin_file=tiny.gin", f"--resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "status: finished after 8 steps" in resumed.stdout


def test_a_rank_that_dies_leaves_rank_0_state_saved(tmp_path: Path) -> None:
    """Rank 1 is killed during step 3; rank 0's next collective fails, and since the gradient
    sum comes before any update it saves its state after step 3, which one process resumes."""
    write_tiny_gin(
        tmp_path, shard=False,
        extra="TrainConfig.hooks = ['tests.hooks_for_tests.KillOtherRankAtStep3']\n"
        "TrainConfig.dist_timeout_s = 30\n",
    )  # fmt: skip
    crashed = craft_cli(tmp_path, "--gin_file=tiny.gin", ranks=2)
    assert crashed.returncode != 0
    # Either rank 0's next collective fails first (it saves and names the lost rank), or
    # torchrun's SIGTERM for the dead rank arrives first (it stops and saves as terminated).
    lost = "another rank stopped answering while" in crashed.stderr
    assert lost or "status: terminated after 3 steps" in crashed.stdout, crashed.stderr[-3000:]
    if lost:
        assert "the state after step 3 is saved:" in crashed.stderr
    [run_dir] = list((tmp_path / "outputs/experiments/tiny").glob("*/*"))
    assert (run_dir / "checkpoints/step-00000003.safetensors").is_file()
    (tmp_path / "tiny.gin").write_text(
        (tmp_path / "tiny.gin").read_text().replace("TrainConfig.hooks", "# TrainConfig.hooks")
    )
    resumed = craft_cli(tmp_path, "--gin_file=tiny.gin", f"--resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "status: finished after 8 steps" in resumed.stdout


def test_mnist_trains_data_parallel_like_one_process(tmp_path: Path) -> None:
    """The classify task under torchrun: 2 gloo ranks end where 1 process does (SGD: see
    above), and the run's first line names the ranks and the backend."""
    from tests.digits import write_digits

    write_digits(tmp_path / "data", train=300, test=100)
    (tmp_path / "digits.gin").write_text(
        "include 'mnist.gin'\nRunConfig.name = 'digits'\nImageDataConfig.val_size = 50\n"
        "CNNConfig.channels = (4, 8)\nCNNConfig.hidden = 16\nTrainConfig.steps = 6\n"
        "TrainConfig.batch_size = 16\nTrainConfig.optimizer = 'sgd'\nTrainConfig.compile = False\n"
        "TrainConfig.eval_every = 0\nTrainConfig.sample_every = 0\nSchedule.kind = 'constant'\n"
        "Schedule.peak_lr = 0.05\nMetricsConfig.wandb = 'disabled'\n"
        "MetricsConfig.progress_bar = False\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def craft(ranks: int) -> tuple[subprocess.CompletedProcess[str], Path]:
        before = set((tmp_path / "outputs").rglob("step-*.safetensors"))
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
        command = [sys.executable, *(launcher if ranks > 1 else []), "-m", "craft.main",
                   "--gin_file=digits.gin"]  # fmt: skip
        result = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False
        )
        assert result.returncode == 0, result.stderr[-3000:]
        [new] = set((tmp_path / "outputs").rglob("step-*.safetensors")) - before
        return result, new

    two, parallel = craft(2)
    assert "2 ranks (gloo); task classify; model cnn" in two.stdout
    one, single = craft(1)
    assert "1 process; task classify" in one.stdout
    a, b = load_file(parallel), load_file(single)
    for name in (n for n in a if n.startswith("params.")):
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0.0)
