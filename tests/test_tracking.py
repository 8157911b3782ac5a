"""Trackers (metrics.jsonl, W&B, progress) and the tracking hook, driven over a fake run."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from craft.errors import DataError
from craft.tracking import (
    JsonlTracker,
    MetricsConfig,
    ProgressTracker,
    Tracker,
    Trackers,
    TrackingHook,
    WandbTracker,
    make_trackers,
    plot_run,
    read_metrics,
)
from craft.train.hooks import RunInfo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WANDB_ENV = ("WANDB_MODE", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_DIR")


def fake_run(run_dir: Path, *, total: int = 10, start: int = 0) -> RunInfo:
    return RunInfo(
        run_dir=run_dir, total_steps=total, start_step=start,
        configs={"TrainConfig": {"steps": total}},
    )  # fmt: skip


def step_metrics(step: int) -> dict[str, float]:
    return {
        "loss": 4.0 / step, "lr": 1e-3 * step, "grad_norm": 0.5, "tokens": 64.0,
        "tokens_per_s": 1000.0, "step_time_s": 0.064,
    }  # fmt: skip


def drive(hook: TrackingHook, run: RunInfo, *, evals: tuple[int, ...] = ()) -> None:
    """Run the hook through steps start+1..total, evaluating after the steps in `evals`."""
    hook.on_start(run)
    for step in range(run.start_step + 1, run.total_steps + 1):
        hook.on_step_end(run, step, step_metrics(step))
        if step in evals:
            hook.on_eval(run, step, {"val/loss": 5.0 / step, "val/perplexity": 2.0})
    hook.on_end(run, {"status": "finished"})


def quiet(run_dir: Path, **fields: object) -> TrackingHook:
    """metrics.jsonl only, unless `fields` turn W&B or the progress display on."""
    cfg = MetricsConfig(**{"wandb": "disabled", "progress_bar": False, **fields})
    return TrackingHook(make_trackers(cfg, run_dir, {}))


@pytest.fixture
def clean_wandb_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No WANDB_* settings from the caller, and HOME in tmp_path; returns that home."""
    for name in (*WANDB_ENV, "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "matplotlib"))
    return home


def test_train_rows_follow_log_every_keep_the_last_step_and_group_names(tmp_path: Path) -> None:
    drive(quiet(tmp_path, log_every=3), fake_run(tmp_path, total=10))
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [3, 6, 9, 10]
    expected = {f"train/{name}": value for name, value in step_metrics(3).items()}
    assert rows[0] == {"step": 3, **expected, "train/memory_mb": rows[0]["train/memory_mb"]}
    assert rows[0]["train/memory_mb"] > 0  # the process's RSS on this CPU-only Linux machine


def test_eval_rows_are_written_in_order(tmp_path: Path) -> None:
    drive(quiet(tmp_path, log_every=5), fake_run(tmp_path, total=10), evals=(4, 10))
    rows = read_metrics(tmp_path)
    kinds = [("val/loss" in r, r["step"]) for r in rows]
    assert kinds == [(True, 4), (False, 5), (False, 10), (True, 10)]
    assert rows[0] == {"step": 4, "val/loss": 5.0 / 4, "val/perplexity": 2.0}


def test_resumed_run_appends(tmp_path: Path) -> None:
    drive(quiet(tmp_path), fake_run(tmp_path, total=4))
    drive(quiet(tmp_path), fake_run(tmp_path, total=6, start=4))
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]


def test_non_finite_values_are_written_as_null(tmp_path: Path) -> None:
    tracker = JsonlTracker(tmp_path)
    tracker.start(fake_run(tmp_path))
    tracker.log({"train/loss": float("nan"), "train/loss_scale": float("inf")}, 1)
    tracker.finish()
    text = (tmp_path / "logs" / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON, for jq and friends
    assert json.loads(text)["train/loss"] is None


class Broken(Tracker):
    def log(self, metrics: dict[str, float], step: int) -> None:
        raise OSError("disk on fire\nmore detail")


def test_a_failing_tracker_is_dropped_with_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jsonl = JsonlTracker(tmp_path)
    trackers = Trackers([Broken(), jsonl])
    trackers.start(fake_run(tmp_path))
    for step in (1, 2):
        trackers.log({"train/loss": 1.0}, step)
    trackers.finish()
    assert capsys.readouterr().err.splitlines() == [
        "craft: warning: Broken.log failed (OSError: disk on fire); going on without it"
    ]
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_wandb_offline_writes_in_the_run_folder_only(tmp_path: Path, clean_wandb_env: Path) -> None:
    run_dir = tmp_path / "outputs" / "exp" / "2026-01-01" / "12-00-00"
    run_dir.mkdir(parents=True)
    png = tmp_path / "grid.png"
    plot_source = tmp_path / "plot"
    drive(quiet(plot_source), fake_run(plot_source, total=2))
    png.write_bytes((plot_source / "loss.png").read_bytes())
    tracker = WandbTracker(run_dir, mode="offline", project="craft", config={"GPTConfig": {}})
    tracker.start(fake_run(run_dir, total=3))
    assert tracker._run is not None, "W&B offline did not start"
    for step in range(1, 4):
        tracker.log({"train/loss": 1.0 / step}, step)
    tracker.log_text("samples", "Winter is coming", 3)
    tracker.log_image("predictions", png, 3)
    tracker.finish()

    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    assert offline_runs[0].name.endswith(f"-{run_id}")
    assert (offline_runs[0] / f"run-{run_id}.wandb").stat().st_size > 0
    tables = list(offline_runs[0].rglob("samples_*.table.json"))
    assert tables and "Winter is coming" in tables[0].read_text()
    assert list(offline_runs[0].rglob("predictions_*.png"))
    assert list(clean_wandb_env.rglob("*")) == []  # nothing in ~/.cache, ~/.config
    assert not any(name in os.environ for name in WANDB_ENV[1:])  # our settings were undone

    again = WandbTracker(run_dir, mode="offline", project="craft", config={})
    again.start(fake_run(run_dir, total=4, start=3))
    again.finish()
    assert all(p.name.split("-")[3] == run_id for p in (run_dir / "wandb").glob("offline-run-*"))


def test_wandb_mode_follows_wandb_mode_env_when_unset(
    tmp_path: Path, clean_wandb_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def kinds(cfg: MetricsConfig) -> list[str]:
        return [type(t).__name__ for t in make_trackers(cfg, tmp_path, {}).trackers]

    assert kinds(MetricsConfig(progress_bar=False)) == ["JsonlTracker", "WandbTracker"]
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert kinds(MetricsConfig(progress_bar=False)) == ["JsonlTracker"]
    assert kinds(MetricsConfig(wandb="offline")) == [
        "JsonlTracker", "ProgressTracker", "WandbTracker"
    ]  # fmt: skip
    drive(quiet(tmp_path / "run", wandb=None), fake_run(tmp_path / "run", total=2))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["logs", "loss.png"]


def test_wandb_failure_warns_once_and_the_run_goes_on(
    tmp_path: Path, clean_wandb_env: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    import wandb

    def broken_init(**kwargs: object) -> None:
        raise RuntimeError("network unreachable\nlong traceback-like detail")

    monkeypatch.setattr(wandb, "init", broken_init)
    drive(quiet(tmp_path, wandb="online"), fake_run(tmp_path, total=3))
    assert capsys.readouterr().err.splitlines() == [
        "craft: warning: W&B did not start (RuntimeError: network unreachable); "
        "continuing without it"
    ]
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_plot_run_writes_a_png(tmp_path: Path) -> None:
    drive(quiet(tmp_path), fake_run(tmp_path, total=6), evals=(3, 6))
    (tmp_path / "loss.png").unlink()  # written at the end; check plot_run on its own
    path = plot_run(tmp_path)
    assert path == tmp_path / "loss.png"
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_plot_run_without_logs_says_not_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        plot_run(tmp_path)
    assert str(error.value) == f"no logs/metrics.jsonl in {tmp_path}: not a Craft run folder?"


def test_plot_run_without_train_rows(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.jsonl").write_text('{"step": 1, "val/loss": 2.0}\n')
    with pytest.raises(DataError, match="has no train rows"):
        plot_run(tmp_path)
    assert not (tmp_path / "loss.png").exists()


def test_read_metrics_skips_a_partial_last_line(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.0}\n{"st')
    assert read_metrics(tmp_path) == [{"step": 1, "train/loss": 2.0}]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_a_bar(tmp_path: Path) -> None:
    stream = FakeTerminal()
    tracker = ProgressTracker(stream=stream)
    tracker.start(fake_run(tmp_path, total=5))
    for step in range(1, 6):
        tracker.log({"train/loss": 4.0 / step, "train/tokens_per_s": 1000.0}, step)
    tracker.finish()
    assert "5/5" in stream.getvalue() and "loss=0.8000" in stream.getvalue()
    assert "\r" in stream.getvalue()


def test_progress_off_a_terminal_prints_plain_lines_now_and_then(tmp_path: Path) -> None:
    stream = io.StringIO()
    tracker = ProgressTracker(stream=stream, every_s=3600.0)
    tracker.start(fake_run(tmp_path, total=500))
    for step in range(1, 501):
        tracker.log({"train/loss": 1.0, "train/images_per_s": 2500.0}, step)
    tracker.finish()
    # An hour between lines: only the last step prints, without carriage returns.
    assert stream.getvalue() == "step 500/500 loss 1.0000 images/s 2,500\n"


def test_progress_off_a_terminal_prints_every_interval(tmp_path: Path) -> None:
    stream = io.StringIO()
    tracker = ProgressTracker(stream=stream, every_s=1e-9)
    tracker.start(fake_run(tmp_path, total=3))
    for step in range(1, 4):
        tracker.log({"train/loss": 1.0}, step)
    assert stream.getvalue().count("\n") == 3 and "\r" not in stream.getvalue()
