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


def test_two_ranks_equal_one_process_with_the_whole_batch(tmp_path: Path) -> None:
    steps = 3
    result = torchrun(str(tmp_path), str(steps))
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = load_file(tmp_path / "rank0.safetensors")
    rank1 = load_file(tmp_path / "rank1.safetensors")
    single = dist_worker.train(distributed.World(), steps)
    for name, value in single.items():
        assert torch.equal(rank0[name], rank1[name]), name  # every rank holds the same params
        torch.testing.assert_close(rank0[name], value, atol=1e-6, rtol=0.0)


def test_a_dying_rank_fails_the_run_within_the_timeout(tmp_path: Path) -> None:
    start = time.monotonic()
    result = torchrun(str(tmp_path), "5", "1")
    assert result.returncode != 0
    assert time.monotonic() - start < 120  # the process group timeout is 20 s
    assert "exitcode  : 17" in result.stderr or "exit code 17" in result.stderr.lower()
    assert not (tmp_path / "rank0.safetensors").exists()  # rank 0 did not finish silently
