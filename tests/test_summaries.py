"""What a finished run prints."""

from __future__ import annotations

from craft.summaries import format_summary


def test_summary_lists_each_split_with_its_own_metrics() -> None:
    text = format_summary({
        "status": "finished", "steps": 1290, "examples": 330_240, "seconds": 201.46,
        "metrics": {"val/loss": 0.0213, "val/accuracy": 0.9944, "val/images": 5000.0,
                    "test/loss": 0.0189, "test/accuracy": 0.99461},
        "best_val_loss": 0.02, "checkpoint": "c/step-00001290.safetensors", "run_dir": "r",
    })  # fmt: skip
    assert text.splitlines() == [
        "status: finished after 1290 steps (330,240 examples in 201.5 s)",
        "val: loss 0.0213, accuracy 99.44%, images 5,000",
        "test: loss 0.0189, accuracy 99.46%",
        "best val loss 0.0200",
        "checkpoint: c/step-00001290.safetensors",
        "run folder: r",
    ]


def test_an_interrupted_run_without_metrics_says_so() -> None:
    text = format_summary({
        "status": "interrupted", "steps": 3, "examples": 12, "seconds": 1.0, "metrics": {},
        "best_val_loss": None, "checkpoint": None, "run_dir": "r",
    })  # fmt: skip
    assert text.splitlines()[0] == "status: interrupted after 3 steps (12 examples in 1.0 s)"
    assert "checkpoint: none written" in text
