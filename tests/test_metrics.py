"""MetricsLogger, plot_run and read_metrics, driven over a fake run (no training)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from craft.errors import DataError
from craft.metrics import MetricsConfig, MetricsLogger, plot_run, read_metrics
from craft.train.hooks import RunInfo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WANDB_ENV = ("WANDB_MODE", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_DIR")


def fake_run(
    run_dir: Path,
    *,
    total: int = 10,
    start: int = 0,
    flops: float | None = None,
    peak: float | None = None,
) -> RunInfo:
    return RunInfo(
        run_dir=run_dir,
        total_steps=total,
        start_step=start,
        configs={"TrainConfig": {"steps": total}},
        tokens_per_step=64,
        flops_per_token=flops,
        peak_flops=peak,
    )


def step_metrics(step: int) -> dict[str, float]:
    return {
        "loss": 4.0 / step,
        "lr": 1e-3 * step,
        "grad_norm": 0.5,
        "tokens": 64.0 * step,
        "tokens_per_s": 1000.0,
        "step_time_s": 0.064,
    }


def drive(logger: MetricsLogger, run: RunInfo, *, evals: tuple[int, ...] = ()) -> None:
    """Run the hook through steps start+1..total, evaluating after the steps in `evals`."""
    logger.on_start(run)
    for step in range(run.start_step + 1, run.total_steps + 1):
        logger.on_step_end(run, step, step_metrics(step))
        if step in evals:
            logger.on_eval(run, step, {"val_loss": 5.0 / step, "val_perplexity": 2.0})
    logger.on_end(run, {"status": "done"})


def quiet(**fields: object) -> MetricsLogger:
    """A logger with W&B and the progress bar off unless `fields` say otherwise."""
    return MetricsLogger(MetricsConfig(**{"wandb": "disabled", "progress_bar": False, **fields}))


@pytest.fixture
def clean_wandb_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No WANDB_* settings from the caller, and HOME in tmp_path; returns that home."""
    for name in (*WANDB_ENV, "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    # matplotlib (the plot at on_end) caches its font list in ~/.cache when first imported.
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "matplotlib"))
    return home


def test_train_rows_follow_log_every_and_keep_the_last_step(tmp_path: Path) -> None:
    drive(quiet(log_every=3), fake_run(tmp_path, total=10))
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [3, 6, 9, 10]
    assert all(r["kind"] == "train" for r in rows)
    assert rows[0] == {
        "kind": "train",
        "step": 3,
        **step_metrics(3),
        "memory_mb": rows[0]["memory_mb"],
    }
    assert rows[0]["memory_mb"] > 0  # the process's RSS on this CPU-only Linux machine
    assert all("mfu" not in r for r in rows)


def test_eval_rows_are_written_in_order(tmp_path: Path) -> None:
    drive(quiet(log_every=5), fake_run(tmp_path, total=10), evals=(4, 10))
    rows = read_metrics(tmp_path)
    assert [(r["kind"], r["step"]) for r in rows] == [
        ("eval", 4),
        ("train", 5),
        ("train", 10),
        ("eval", 10),
    ]
    assert rows[0] == {"kind": "eval", "step": 4, "val_loss": 5.0 / 4, "val_perplexity": 2.0}


def test_resumed_logger_appends(tmp_path: Path) -> None:
    drive(quiet(), fake_run(tmp_path, total=4))
    drive(quiet(), fake_run(tmp_path, total=6, start=4))
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]


def test_mfu_is_flops_times_throughput_over_peak(tmp_path: Path) -> None:
    drive(quiet(), fake_run(tmp_path, total=2, flops=6e6, peak=1e12))
    rows = read_metrics(tmp_path)
    assert [r["mfu"] for r in rows] == [pytest.approx(6e6 * 1000.0 / 1e12)] * 2


@pytest.mark.parametrize(("flops", "peak"), [(6e6, None), (None, 1e12)])
def test_mfu_absent_without_flops_or_peak(
    tmp_path: Path, flops: float | None, peak: float | None
) -> None:
    drive(quiet(), fake_run(tmp_path, total=2, flops=flops, peak=peak))
    assert all("mfu" not in r for r in read_metrics(tmp_path))


def test_non_finite_values_are_written_as_null(tmp_path: Path) -> None:
    run = fake_run(tmp_path, total=1)
    logger = quiet()
    logger.on_start(run)
    logger.on_step_end(run, 1, {"loss": float("nan"), "loss_scale": float("inf")})
    logger.on_end(run, {})
    text = (tmp_path / "logs" / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON, for jq and friends
    assert json.loads(text)["loss"] is None


def test_wandb_offline_writes_in_the_run_folder_only(tmp_path: Path, clean_wandb_env: Path) -> None:
    run_dir = tmp_path / "outputs" / "exp" / "2026-01-01" / "12-00-00"
    run = fake_run(run_dir, total=3)
    logger = MetricsLogger(MetricsConfig(wandb="offline", progress_bar=False))
    logger.on_start(run)
    assert logger._wandb is not None, "W&B offline did not start"
    for step in range(1, 4):
        logger.on_step_end(run, step, step_metrics(step))
    logger.log_samples(3, "Winter is coming")
    logger.on_end(run, {})

    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    assert offline_runs[0].name.endswith(f"-{run_id}")
    assert (offline_runs[0] / f"run-{run_id}.wandb").stat().st_size > 0
    tables = list(offline_runs[0].rglob("samples_*.table.json"))
    assert tables and "Winter is coming" in tables[0].read_text()
    assert list(clean_wandb_env.rglob("*")) == []  # nothing in ~/.cache, ~/.config
    assert not any(name in os.environ for name in WANDB_ENV[1:])  # our settings were undone

    # A resumed run in the same folder continues the same W&B run id.
    drive(
        MetricsLogger(MetricsConfig(wandb="offline", progress_bar=False)),
        fake_run(run_dir, total=4, start=3),
    )
    assert (run_dir / "wandb_id.txt").read_text().strip() == run_id
    assert all(p.name.split("-")[3] == run_id for p in (run_dir / "wandb").glob("offline-run-*"))


def test_wandb_mode_follows_wandb_mode_env_when_unset(
    tmp_path: Path, clean_wandb_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert MetricsLogger(MetricsConfig()).wandb_mode() == "offline"
    assert MetricsLogger(MetricsConfig(wandb="online")).wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = MetricsLogger(MetricsConfig(progress_bar=False))
    assert logger.wandb_mode() == "disabled"
    drive(logger, fake_run(tmp_path / "run", total=2))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["logs", "loss.png"]


def test_wandb_failure_warns_once_and_the_run_goes_on(
    tmp_path: Path,
    clean_wandb_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import wandb

    def broken_init(**kwargs: object) -> None:
        raise RuntimeError("network unreachable\nlong traceback-like detail")

    monkeypatch.setattr(wandb, "init", broken_init)
    logger = MetricsLogger(MetricsConfig(wandb="online", progress_bar=False))
    drive(logger, fake_run(tmp_path, total=3))
    logger.log_samples(3, "text")
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "craft: warning: W&B did not start (RuntimeError: network unreachable); "
        "continuing without it"
    ]
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_plot_run_writes_a_png(tmp_path: Path) -> None:
    drive(quiet(), fake_run(tmp_path, total=6), evals=(3, 6))
    (tmp_path / "loss.png").unlink()  # written by on_end; check plot_run on its own
    path = plot_run(tmp_path)
    assert path == tmp_path / "loss.png"
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_on_end_writes_the_plot(tmp_path: Path) -> None:
    drive(quiet(), fake_run(tmp_path, total=2))
    assert (tmp_path / "loss.png").read_bytes().startswith(PNG_SIGNATURE)


def test_plot_run_without_logs_says_not_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        plot_run(tmp_path)
    assert str(error.value) == f"no logs/metrics.jsonl in {tmp_path}: not a Craft run folder?"


def test_plot_run_without_train_rows(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.jsonl").write_text('{"kind": "eval", "step": 1}\n')
    with pytest.raises(DataError, match="has no train rows"):
        plot_run(tmp_path)
    assert not (tmp_path / "loss.png").exists()


def test_read_metrics_skips_a_partial_last_line(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.jsonl").write_text(
        '{"kind": "train", "step": 1, "loss": 2.0}\n{"kind": "tr'
    )
    assert read_metrics(tmp_path) == [{"kind": "train", "step": 1, "loss": 2.0}]


def test_progress_bar_goes_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    drive(quiet(progress_bar=True), fake_run(tmp_path, total=5))
    out, err = capsys.readouterr()
    assert out == ""
    assert "5/5" in err and "loss=0.8000" in err


def test_no_progress_bar_when_disabled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    drive(quiet(progress_bar=False), fake_run(tmp_path, total=5))
    assert capsys.readouterr() == ("", "")
