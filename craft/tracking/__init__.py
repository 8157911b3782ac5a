"""Where a run's numbers, texts and images go: trackers behind one interface, plots apart.

`Tracker` is the interface (`log`, `log_text`, `log_image`, `finish`); `metrics.jsonl`
(`JsonlTracker`), Weights & Biases (`WandbTracker`) and the progress bar (`ProgressTracker`)
implement it, and `TrackingHook` feeds them from the training loop.
"""

from craft.tracking.base import Tracker, Trackers
from craft.tracking.config import MetricsConfig
from craft.tracking.hook import TrackingHook, make_trackers
from craft.tracking.jsonl import METRICS_FILE, JsonlTracker, read_metrics
from craft.tracking.plots import plot_run
from craft.tracking.progress import ProgressTracker
from craft.tracking.wandb_run import WandbTracker

__all__ = [
    "METRICS_FILE",
    "JsonlTracker",
    "MetricsConfig",
    "ProgressTracker",
    "Tracker",
    "Trackers",
    "TrackingHook",
    "WandbTracker",
    "make_trackers",
    "plot_run",
    "read_metrics",
]
