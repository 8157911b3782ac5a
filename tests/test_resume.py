"""Resume semantics: a finished run is left alone, a changed config is refused unless asked
for, `latest` says what it takes and skips an unreadable newest file, a checkpoint outside a
run folder starts a new one, and metrics.jsonl never repeats a step."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from craft import checkpoint
from craft.errors import ConfigError
from craft.main import main
from craft.optim import Schedule
from craft.resume import Resumption, check_changes, config_changes
from craft.tracking import read_metrics
from craft.train.meta import CheckpointMeta
from tests.conftest import CliRunner
from tests.test_train import TEXT, TINY

CHECKPOINT_8 = "checkpoints/step-00000008.safetensors"


@pytest.fixture
def tiny_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, craft_configs_only: None) -> Path:
    """`tiny.gin` (8 steps, checkpoints at 4 and 8) in the working folder `tmp_path`."""
    monkeypatch.chdir(tmp_path)
    text = tmp_path / "tiny.txt"
    text.write_text(TEXT)
    (tmp_path / "tiny.gin").write_text(TINY.format(source=text, steps=8))
    return tmp_path


def train(capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str, str]:
    """`python -m craft.main --gin_file=tiny.gin FLAGS`, in this process."""
    code = main(["--gin_file=tiny.gin", *flags])
    out, err = capsys.readouterr()
    return code, out, err


def the_run(root: Path) -> Path:
    [run_dir] = list((root / "outputs/experiments/tiny").glob("*/*"))
    return run_dir


def first_run(root: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """Train tiny.gin's 8 steps; its run folder."""
    code, _, err = train(capsys)
    assert code == 0, err
    return the_run(root)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_finished_fewer_steps_and_changed_config(
    run_cli: CliRunner, tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = run_cli("--gin_file=tiny.gin")
    assert first.returncode == 0, first.stderr
    run_dir = the_run(tiny_run)
    final = run_dir / CHECKPOINT_8
    before = digest(final)

    again = run_cli("--gin_file=tiny.gin", "--resume=latest")
    assert again.returncode == 0, again.stderr
    assert f"{final.name} already finished its 8 steps; nothing to do" in again.stdout
    assert digest(final) == before  # its val_loss and everything else untouched

    code, _, err = train(capsys, "--resume=latest", "--gin.TrainConfig.steps=4")
    assert code == 2
    assert "is at step 8, past TrainConfig.steps = 4: a resumed run cannot go back" in err

    longer = ("--resume=latest", "--gin.TrainConfig.steps=12")
    code, _, err = train(
        capsys, *longer, "--gin.TrainConfig.batch_size=8", "--gin.RunConfig.seed=3"
    )
    assert code == 2
    assert "resuming " in err and "under a different config:" in err
    assert "TrainConfig.batch_size: 4 -> 8" in err and "RunConfig.seed: 0 -> 3" in err
    assert "--resume_with_changes" in err
    assert digest(final) == before and not (run_dir / CHECKPOINT_8.replace("8", "12")).exists()

    gin_before = (run_dir / "config.gin").read_text()
    code, out, err = train(
        capsys, *longer, "--gin.TrainConfig.batch_size=8", "--resume_with_changes"
    )
    assert code == 0, err
    assert f"craft: resuming {run_dir.relative_to(tiny_run)} from {final.name} (step 8)" in out
    assert "config changed at step 8 (recorded in config.step-00000008.gin)" in out
    assert "TrainConfig.batch_size: 4 -> 8" in out and "TrainConfig.steps: 8 -> 12" in out
    assert (run_dir / "config.gin").read_text() == gin_before
    assert "TrainConfig.batch_size = 8" in (run_dir / "config.step-00000008.gin").read_text()
    steps = [row["step"] for row in read_metrics(run_dir) if "train/loss" in row]
    assert steps == list(range(1, 13))


def test_metrics_and_samples_have_no_duplicate_steps_after_resuming_an_earlier_checkpoint(
    tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sampling = "--gin.TrainConfig.sample_every=4"
    code, _, err = train(capsys, sampling)
    assert code == 0, err
    run_dir = the_run(tiny_run)
    # Back to step 4: steps 5..8 are redone and must appear once.
    code, _, err = train(
        capsys, sampling, f"--resume={run_dir / 'checkpoints/step-00000004.safetensors'}"
    )
    assert code == 0, err
    steps = [row["step"] for row in read_metrics(run_dir) if "train/loss" in row]
    assert steps == list(range(1, 9))
    # The abandoned continuation's checkpoint is set aside, never taken by `latest`.
    assert (run_dir / "checkpoints/abandoned-step-00000008.safetensors").is_file()
    evals = [row["step"] for row in read_metrics(run_dir) if "val/loss" in row]
    assert evals == [4, 8]
    samples = (run_dir / "samples.txt").read_text()
    assert re.findall(r"^=== step (\d+) ===$", samples, re.MULTILINE) == ["4", "8"]


def test_latest_skips_an_unreadable_newest_checkpoint(
    tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = first_run(tiny_run, capsys)
    final = run_dir / CHECKPOINT_8
    final.write_bytes(final.read_bytes()[: final.stat().st_size // 2])  # a torn copy

    code, _, err = train(capsys, f"--resume={final}")
    assert code == 1
    assert f"{final} is not a readable checkpoint" in err
    assert "the previous checkpoint is" in err and "step-00000004.safetensors" in err

    code, out, err = train(capsys, "--resume=latest")
    assert code == 0, err
    torn = final.relative_to(tiny_run)
    assert f"craft: warning: {torn} is not a readable checkpoint" in err
    assert "taking an older checkpoint" in err
    assert "from step-00000004.safetensors (step 4)" in out
    assert "status: finished after 8 steps" in out
    assert checkpoint.read_meta(final)["step"] == 8  # written whole again


def test_a_checkpoint_outside_a_run_folder_starts_a_new_one(
    tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = first_run(tiny_run, capsys)
    downloads = tiny_run / "Downloads"
    downloads.mkdir()
    shutil.copy2(run_dir / CHECKPOINT_8, downloads)
    code, out, err = train(
        capsys, f"--resume={downloads / 'step-00000008.safetensors'}", "--gin.TrainConfig.steps=12"
    )
    assert code == 0, err
    assert "is not inside a run folder; the continuation goes to a new run folder" in out
    assert sorted(p.name for p in downloads.iterdir()) == ["step-00000008.safetensors"]
    runs = sorted((tiny_run / "outputs/experiments/tiny").glob("*/*"))
    assert len(runs) == 2
    [new] = [r for r in runs if r != run_dir]
    assert (new / "checkpoints/step-00000012.safetensors").is_file()
    assert not (tiny_run / "checkpoints").exists()  # nothing written beside Downloads


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--resume"], "--resume needs a value: --resume=PATH (latest, a checkpoint"),
        (["run", "--resume=3"], "--resume=3 is not a path"),
        (["evaluate", "--checkpoint"], "--checkpoint needs a value"),
        (["generate", "--checkpoint=7"], "--checkpoint=7 is not a path"),
        (["run", "--resume=latest", "--resume_with_changes=maybe"], "takes no value"),
    ],
)
def test_path_flags_without_a_path_are_usage_errors(
    tiny_run: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err


CONFIG_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "steps": st.integers(1, 5),
        "batch_size": st.integers(1, 5),
        "peak_lr": st.floats(0, 1),
        "eval_every": st.integers(0, 5),
        "name": st.text(max_size=3),
    },
)


@given(a=CONFIG_VALUES, b=CONFIG_VALUES)
def test_config_changes_laws(a: dict, b: dict) -> None:
    stored = {"TrainConfig": a, "Schedule": a}
    assert config_changes(stored, stored) == ([], [])
    binding, free = config_changes(stored, {"TrainConfig": b, "Schedule": b})
    shared = {k for k in a.keys() & b.keys() if a[k] != b[k]}
    # Every differing shared field is reported once per config, and only those.
    assert len(binding) + len(free) == 2 * len(shared)
    train_free = {"steps", "eval_every"}
    assert {line.split(":")[0] for line in free} == {
        f"TrainConfig.{k}" for k in shared & train_free
    }


@pytest.mark.parametrize(("kind", "refused"), [("constant", False), ("warmup_cosine", True)])
def test_a_longer_schedule_is_a_change_only_when_its_rates_change(
    tmp_path: Path, kind: str, refused: bool
) -> None:
    """Extending a run stretches a cosine schedule (its lr at step 8 jumps back up), which
    is refused unless asked for; a constant lr is the same at every step, so it passes."""
    before = Schedule(kind=kind, warmup_steps=2).for_run(8).model_dump(mode="json")  # type: ignore[arg-type]
    after = Schedule(kind=kind, warmup_steps=2).for_run(12).model_dump(mode="json")  # type: ignore[arg-type]
    meta = CheckpointMeta.model_validate(
        {"step": 8, "model": "gpt", "model_config": {}, "configs": {"Schedule": before}}
    )
    resumption = Resumption(path=tmp_path / "step-00000008.safetensors", meta=meta, run_dir=None)
    current = {"Schedule": after}
    if refused:
        with pytest.raises(ConfigError, match=r"Schedule.total_steps: 8 -> 12"):
            check_changes(resumption, current, steps=12, allow=False)
    else:
        assert check_changes(resumption, current, steps=12, allow=False) == [
            "Schedule.total_steps: 8 -> 12 (the same learning rates)"
        ]
    assert check_changes(resumption, current, steps=12, allow=True)


def test_other_data_under_the_same_config_is_a_change(
    tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checkpoint records the prepared data's fingerprint: a text edited in place (same
    path, same config) is refused like any other change that alters the computation."""
    first_run(tiny_run, capsys)
    (tiny_run / "tiny.txt").write_text(TEXT.replace("plainly", "loudly"))
    code, _, err = train(capsys, "--resume=latest", "--gin.TrainConfig.steps=12")
    assert code == 2
    assert "under a different config:\n  the task's data: '" in err
