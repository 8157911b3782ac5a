"""Metrics: `logs/metrics.jsonl`, Weights & Biases, a progress bar and a loss plot.

`MetricsLogger` is the built-in hook that records a run. Every `log_every` steps it appends one
JSON row to `<run_dir>/logs/metrics.jsonl` and logs the same values to W&B (offline by default,
so it works with no network and no account); evaluations add `"kind": "eval"` rows. At the end
it writes `<run_dir>/loss.png` (`plot_run`). Nothing here may stop a run: if W&B fails, one
warning line goes to stderr and training goes on without it.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from craft.config import configurable
from craft.errors import DataError
from craft.train.hooks import Hook, RunInfo

METRICS_FILE = Path("logs") / "metrics.jsonl"
PLOT_FILE = "loss.png"
WANDB_ID_FILE = "wandb_id.txt"


@configurable
class MetricsConfig(BaseModel):
    """Where and how often a run's metrics are recorded."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    wandb: Literal["offline", "online", "disabled"] | None = None
    """W&B mode; None: the WANDB_MODE environment variable when set, else "offline"."""
    wandb_project: str = "craft"
    log_every: int = Field(1, gt=0)
    """Steps between metrics.jsonl rows (the last step is always logged)."""
    wandb_every: int = Field(10, gt=0)
    """Steps between W&B logs, on top of log_every. W&B's background process competes for the
    CPU: logging every step slowed a 1M-parameter CPU run by 15 % on 2 cores."""
    progress_bar: bool = True
    """Show a tqdm progress bar on stderr."""


class MetricsLogger(Hook):
    """Writes metrics.jsonl, logs to W&B, shows a progress bar and plots the run at the end."""

    def __init__(self, cfg: MetricsConfig | None = None) -> None:
        self.cfg = cfg or MetricsConfig()
        self._file: Any = None  # the open metrics.jsonl
        self._wandb: Any = None  # the W&B run, None when disabled or failed
        self._bar: Any = None
        self._samples: list[list[Any]] = []  # every sample so far: W&B tables are replaced
        self._env_set: list[str] = []  # environment variables we set, to undo on_end

    # -- hook events ---------------------------------------------------------------------------

    def on_start(self, run: RunInfo) -> None:
        """Open metrics.jsonl for appending, start W&B and the progress bar."""
        (run.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        # Appending: a resumed run continues the same file. Line buffering keeps every row on
        # disk as it is written, so a crash loses nothing and `tail -f` follows the run.
        self._file = open(run.run_dir / METRICS_FILE, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        run.extras.setdefault("metrics", self)  # how the sampling hook finds log_samples
        mode = self.wandb_mode()
        if mode != "disabled":
            self._wandb = self._start_wandb(run, mode)
        if self.cfg.progress_bar:
            from tqdm import tqdm  # not tqdm.auto: the bar must go to stderr, also in notebooks

            self._bar = tqdm(
                total=run.total_steps,
                initial=run.start_step,
                file=sys.stderr,  # looked up now, so a redirected stderr (pytest, wandb) works
                unit="step",
                dynamic_ncols=True,
            )

    def on_step_end(self, run: RunInfo, step: int, metrics: dict[str, float]) -> None:
        """Every `log_every` steps (and at the last step) one train row; every `wandb_every` of
        those a W&B log; the bar every step."""
        if self._bar is not None:
            # Postfix first: update() redraws (at most every 0.1 s) and shows both.
            self._bar.set_postfix(_postfix(step, metrics), refresh=False)
            self._bar.update(step - self._bar.n)
        if step % self.cfg.log_every and step != run.total_steps:
            return
        row: dict[str, Any] = {"kind": "train", "step": step, **metrics}
        tokens_per_s = metrics.get("tokens_per_s")
        if run.flops_per_token and run.peak_flops and tokens_per_s is not None:
            row["mfu"] = run.flops_per_token * tokens_per_s / run.peak_flops
        memory_mb = _memory_mb()
        if memory_mb is not None:
            row["memory_mb"] = memory_mb
        self._write(row)
        if step % self.cfg.wandb_every == 0 or step == run.total_steps:
            self._wandb_log({k: v for k, v in row.items() if k not in ("kind", "step")}, step)

    def on_eval(self, run: RunInfo, step: int, results: dict[str, float]) -> None:
        """One eval row and a W&B log of the results."""
        self._write({"kind": "eval", "step": step, **results})
        self._wandb_log(dict(results), step)

    def log_samples(self, step: int, text: str) -> None:
        """Log sample text to W&B as a table of (step, text), one row per call."""
        if self._wandb is None:
            return
        import wandb

        self._samples.append([step, text])
        # A table logged again under the same key replaces the old one, so log all rows so far.
        self._wandb_log(
            {"samples": wandb.Table(columns=["step", "text"], data=list(self._samples))}, step
        )

    def on_end(self, run: RunInfo, summary: dict[str, Any]) -> None:
        """Close the bar and the file, finish W&B, restore the environment, plot the run."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._wandb is not None:
            try:
                import wandb

                self._wandb.finish()
                # Stop W&B's background service too: it keeps the environment it was started
                # with, so the next run in this process would log into this run's folder.
                wandb.teardown()
            except Exception as error:
                _warn(f"W&B did not finish cleanly ({_one_line(error)})")
            self._wandb = None
        self._restore_env()
        try:
            plot_run(run.run_dir)
        except DataError:
            pass  # no train rows yet (the run stopped before its first logged step)
        except Exception as error:
            _warn(f"could not plot the run ({_one_line(error)})")

    # -- helpers -------------------------------------------------------------------------------

    def wandb_mode(self) -> str:
        """The W&B mode this logger uses: the config's, else WANDB_MODE, else "offline"."""
        return self.cfg.wandb or os.environ.get("WANDB_MODE") or "offline"

    def _start_wandb(self, run: RunInfo, mode: str) -> Any:
        """Start a W&B run, resumed if this folder already has one; None (and a warning) on
        any failure: metrics.jsonl still records everything."""
        run_dir = run.run_dir
        self._set_env("WANDB_SILENT", "true")
        # W&B writes logs under ~/.cache/wandb and artifact staging under ~/.local/share/wandb;
        # keep them with the run so a run leaves nothing in the user's home.
        self._set_env("WANDB_CACHE_DIR", str(run_dir / "wandb" / "cache"))
        self._set_env("WANDB_DATA_DIR", str(run_dir / "wandb" / "data"))
        if mode == "offline":
            # Only offline: online needs the user's ~/.config/wandb/settings (e.g. the server
            # chosen with `wandb login --host`); offline W&B never writes there anyway.
            self._set_env("WANDB_CONFIG_DIR", str(run_dir / "wandb" / "config"))
        try:
            import wandb

            id_file = run_dir / WANDB_ID_FILE
            if id_file.is_file():
                run_id = id_file.read_text(encoding="utf-8").strip()
            else:
                run_id = secrets.token_hex(4)  # W&B ids: lowercase letters and digits
                id_file.write_text(run_id + "\n", encoding="utf-8")
            return wandb.init(
                project=self.cfg.wandb_project,
                name=_run_name(run_dir),
                dir=str(run_dir),
                mode=mode,  # type: ignore[arg-type]  # WANDB_MODE may hold W&B's other names
                config=run.configs,
                id=run_id,
                resume="allow",
                # Console capture wraps every write to stdout/stderr (the progress bar writes
                # each step) and the system monitor samples in the background: together they
                # slowed a small model's step 5x on 2 cores. Craft logs memory itself.
                settings=wandb.Settings(console="off", x_disable_stats=True),
            )
        except Exception as error:
            _warn(f"W&B did not start ({_one_line(error)}); continuing without it")
            return None

    def _set_env(self, name: str, value: str) -> None:
        if name not in os.environ:  # a value the user set wins
            os.environ[name] = value
            self._env_set.append(name)

    def _restore_env(self) -> None:
        for name in self._env_set:
            os.environ.pop(name, None)
        self._env_set.clear()

    def _write(self, row: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps({k: _json_value(v) for k, v in row.items()}) + "\n")

    def _wandb_log(self, values: dict[str, Any], step: int) -> None:
        if self._wandb is None:
            return
        try:
            self._wandb.log(values, step=step)
        except Exception as error:
            _warn(f"W&B logging failed ({_one_line(error)}); continuing without it")
            self._wandb = None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of `<run_dir>/logs/metrics.jsonl`, in file order."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise DataError(f"no {METRICS_FILE.as_posix()} in {run_dir}: not a Craft run folder?")
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                break  # a run killed mid-write leaves a partial last line: skip it
            raise DataError(f"{path}:{number}: not a JSON row: {error}") from None
    return rows


def plot_run(run_dir: str | Path) -> Path:
    """Plot train and val loss (top) and lr (bottom) against step into `<run_dir>/loss.png`."""
    # The object API with an explicit Agg canvas: no display needed, and no pyplot global state
    # (pyplot would change the backend of a notebook that imports Craft).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    train = _by_step(rows, "train")
    if not train:
        raise DataError(f"{run_dir / METRICS_FILE} has no train rows: the run logged no step")
    evals = _by_step(rows, "eval")

    fig = Figure(figsize=(8, 6), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, lr_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    loss_ax.plot(*_series(train, "loss"), label="train loss")
    val = _series(evals, "val_loss")
    if val[0]:
        loss_ax.plot(*val, marker="o", label="val loss")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    loss_ax.grid(alpha=0.3)
    loss_ax.set_title(_run_name(run_dir))
    lr_ax.plot(*_series(train, "lr"), color="tab:green")
    lr_ax.set_xlabel("step")
    lr_ax.set_ylabel("learning rate")
    lr_ax.grid(alpha=0.3)
    out = run_dir / PLOT_FILE
    fig.savefig(out, dpi=100)
    return out


def _by_step(rows: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Rows of one kind, one per step, sorted; a later row wins. A run resumed from an older
    checkpoint logs some steps again, and the later rows are the ones that count."""
    latest = {row["step"]: row for row in rows if row.get("kind") == kind and "step" in row}
    return [latest[step] for step in sorted(latest)]


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
    return [p[0] for p in points], [p[1] for p in points]


def _run_name(run_dir: Path) -> str:
    """`<experiment>/<date>/<time>`: the last three parts of a run folder's path."""
    return "/".join(run_dir.resolve().parts[-3:])


def _postfix(step: int, metrics: dict[str, float]) -> dict[str, str]:
    postfix = {"step": str(step)}
    if "loss" in metrics:
        postfix["loss"] = f"{metrics['loss']:.4f}"
    if "tokens_per_s" in metrics:
        postfix["tok/s"] = f"{metrics['tokens_per_s']:,.0f}"
    return postfix


def _memory_mb() -> float | None:
    """Peak CUDA memory allocated when CUDA is in use, else this process's current RSS."""
    # is_initialized, not is_available: a CPU run on a GPU machine must not create a context.
    if torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None  # not Linux: leave the field out
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _json_value(value: Any) -> Any:
    """JSON-safe: tensors and numpy scalars to numbers, NaN and inf to null (strict JSON)."""
    if isinstance(value, bool | int | str) or value is None:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _warn(message: str) -> None:
    print(f"craft: warning: {message}", file=sys.stderr)
