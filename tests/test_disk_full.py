"""A full disk: one clear message naming the file and the space, earlier checkpoints intact."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors
import torch

from craft import checkpoint
from craft.files import DiskFullError, is_out_of_space
from craft.tracking.base import Tracker, Trackers
from tests.conftest import REPO, CliRunner
from tests.test_train import TEXT, TINY


def test_a_checkpoint_that_does_not_fit_leaves_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {"w": torch.arange(1024, dtype=torch.float32)}
    first = checkpoint.save(tmp_path, state, step=1, meta={"step": 1})
    real_save = checkpoint.save_file

    def disk_fills_mid_write(tensors: dict, filename: str, metadata: dict) -> None:
        Path(filename).write_bytes(b"partial")  # what a write cut short leaves behind
        raise safetensors.SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(checkpoint, "save_file", disk_fills_mid_write)
    with pytest.raises(DiskFullError) as caught:
        checkpoint.save(tmp_path, state, step=2, meta={"step": 2})
    message = str(caught.value)
    assert f"no space to write {tmp_path / 'step-00000002.safetensors'} (disk full)" in message
    assert "it needs about 4.0 KiB" in message and "are free there" in message
    assert "earlier checkpoints) are intact" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # no partial file
    monkeypatch.setattr(checkpoint, "save_file", real_save)
    loaded, meta = checkpoint.load(first, like=state)
    assert torch.equal(loaded["w"], state["w"]) and meta == {"step": 1}


@pytest.mark.parametrize(
    ("error", "full"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
        (OSError(errno.EFBIG, "File too large"), True),
        (safetensors.SafetensorError("I/O error: File too large (os error 27)"), True),
        (OSError(errno.EACCES, "Permission denied"), False),
        (safetensors.SafetensorError("I/O error: Permission denied (os error 13)"), False),
    ],
)
def test_out_of_space_is_recognised(error: BaseException, full: bool) -> None:
    assert is_out_of_space(error) is full


class _FullDisk(Tracker):
    path = Path("run/logs/metrics.jsonl")

    def log(self, metrics: dict[str, float], step: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


class _Broken(Tracker):
    def log(self, metrics: dict[str, float], step: int) -> None:
        raise RuntimeError("the service is down")


def test_a_full_disk_stops_the_trackers_where_other_failures_only_drop_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    broken = Trackers([_Broken()])
    broken.log({"loss": 1.0}, step=1)
    assert broken.trackers == [] and "going on without it" in capsys.readouterr().err
    with pytest.raises(DiskFullError, match=r"no space to write run/logs/metrics.jsonl \(disk"):
        Trackers([_FullDisk()]).log({"loss": 1.0}, step=1)


def test_cli_run_out_of_space_says_which_file(run_cli: CliRunner, tmp_path: Path) -> None:
    """A real OS error: a file-size limit (`ulimit -f`) that the first checkpoint exceeds."""
    text = tmp_path / "tiny.txt"
    text.write_text(TEXT)
    (tmp_path / "tiny.gin").write_text(TINY.format(source=text, steps=8))
    prepared = run_cli(
        "--gin_file=tiny.gin", "--gin.TrainConfig.steps=1", "--gin.RunConfig.name=warm"
    )
    assert prepared.returncode == 0, prepared.stderr  # data prepared without a limit

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (24_000, 24_000))

    result = subprocess.run(
        [sys.executable, "-m", "craft.main", "--gin_file=tiny.gin"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
        text=True, timeout=300, preexec_fn=limit_file_size, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("craft: error:")]
    assert "no space to write outputs/experiments/tiny/" in line
    assert "/checkpoints/step-00000004.safetensors (file size limit): it needs about" in line
    assert "Traceback" not in result.stderr
    [run_dir] = list((tmp_path / "outputs/experiments/tiny").glob("*/*"))
    assert list((run_dir / "checkpoints").glob("step-*")) == []  # no partial file either


def test_prepare_out_of_space_leaves_no_partial_file(run_cli: CliRunner, tmp_path: Path) -> None:
    """A file-size limit below train.bin's size: one message, no temporary left behind."""
    text = tmp_path / "big.txt"
    text.write_text(TEXT * 12)  # about 200 KB: train.bin needs about 360 KB of uint16 ids

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    result = subprocess.run(
        [sys.executable, "-m", "craft.main", "prepare", f"--input={text}", "--output_dir=out"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
        text=True, timeout=300, preexec_fn=limit_file_size, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "craft: error: no space to write out (file size limit)" in result.stderr
    assert "No partial file is left" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".lock"]
