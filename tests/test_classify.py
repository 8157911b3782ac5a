"""The classify task end to end on synthetic digits, and the messages of its bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from craft.data.config import ImageDataConfig
from craft.models import model_spec
from craft.tasks import Classification
from tests.conftest import CliRunner
from tests.digits import write_digits

TINY = """
include 'mnist.gin'
RunConfig.name = 'digits'
ImageDataConfig.val_size = 100
CNNConfig.channels = (4, 8)
CNNConfig.hidden = 16
TrainConfig.steps = 30
TrainConfig.batch_size = 32
TrainConfig.compile = False
TrainConfig.eval_every = 10
TrainConfig.eval_batch_size = 64
TrainConfig.checkpoint_every = 10
TrainConfig.sample_every = 10
Schedule.warmup_steps = 3
MetricsConfig.progress_bar = False
MetricsConfig.wandb = 'disabled'
"""


@pytest.fixture
def digits(tmp_path: Path) -> Path:
    write_digits(tmp_path / "data")
    (tmp_path / "digits.gin").write_text(TINY)
    return tmp_path


def test_cli_trains_evaluates_and_draws(run_cli: CliRunner, digits: Path) -> None:
    trained = run_cli("--gin_file=digits.gin")
    assert trained.returncode == 0, trained.stderr
    lines = trained.stdout.splitlines()
    assert lines[1].startswith("craft: cpu (") and "1 process; task classify; model cnn" in lines[1]
    assert "status: finished after 30 steps (960 examples" in trained.stdout
    test_line = next(line for line in lines if line.startswith("test: "))
    accuracy = float(test_line.split("accuracy ")[1].split("%")[0]) / 100
    assert accuracy > 0.5, trained.stdout  # ten well-separated classes
    [run_dir] = list((digits / "outputs/experiments/digits").glob("*/*"))
    for name in ("predictions.png", "confusion.png", "loss.png"):
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "RunConfig.task = 'classify'" in (run_dir / "config.gin").read_text()
    rows = [json.loads(line) for line in (run_dir / "logs/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val/accuracy" in r] == [10, 20, 30]
    assert any("test/accuracy" in r for r in rows) and "train/images_per_s" in rows[0]
    assert "train/loss_scale" not in rows[0]  # fp32: no loss scaling to report

    evaluated = run_cli("evaluate", f"--checkpoint={run_dir}", "--split=test")
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["task"] == "classify" and result["split"] == "test"
    assert result["accuracy"] == pytest.approx(accuracy, abs=1e-4) and result["loss"] > 0
    assert result["images"] == 200

    # Ten more steps stretch the cosine schedule: a change the resume must be told to accept.
    longer = ("--gin_file=digits.gin", "--gin.TrainConfig.steps=40", "--resume=latest")
    refused = run_cli(*longer)
    assert refused.returncode == 2 and "Schedule.total_steps: 30 -> 40" in refused.stderr
    resumed = run_cli(*longer, "--resume_with_changes")
    assert resumed.returncode == 0, resumed.stderr
    assert "status: finished after 40 steps" in resumed.stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--gin.TrainConfig.model='gpt'"],
         "TrainConfig.model = 'gpt' takes tokens, but the 'classify' task feeds it images"),
        (["--gin.CNNConfig.image_size=32"], "model 'cnn' does not take this dataset's images"),
        (["--gin.CNNConfig.num_classes=7"],
         "CNNConfig.num_classes = 7, but the dataset has 10"),
        (["--gin.TrainConfig.model='cnnn'"], "'cnnn' is not a registered model"),
        (["--gin.RunConfig.task='clasify'"], "did you mean 'classify'"),
        (["--gin.ImageDataConfig.val_size=600"], "val_size=600 must be in [0, 600)"),
    ],
)  # fmt: skip
def test_bad_inputs_get_one_clear_line(
    run_cli: CliRunner, digits: Path, flags: list[str], message: str
) -> None:
    result = run_cli("--gin_file=digits.gin", *flags)
    assert result.returncode in (1, 2)
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not list(digits.glob("outputs/experiments/digits/*/*/checkpoints/*.safetensors"))


def test_evaluate_refuses_what_is_not_a_checkpoint(run_cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{}")
    result = run_cli("evaluate", "--checkpoint=tokenizer.json")
    assert result.returncode == 1
    assert "tokenizer.json is not a checkpoint: give a step-*.safetensors file or a run folder" in (
        result.stderr
    )


def test_loss_weighs_by_images_and_counts_correct_ones(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_digits(data_dir, train=200, test=50)
    task = Classification.open(
        {"ImageDataConfig": ImageDataConfig(data_dir=str(data_dir), val_size=20)}
    )
    spec = model_spec("cnn")
    cfg = task.fill_model_config(spec, spec.config(channels=(4,), hidden=0))
    params = spec.init(cfg, seed=0)
    batches = list(task.eval_batches("test", 16))
    assert [len(b["labels"]) for b in batches] == [16, 16, 16, 2]

    def apply(params: dict, x: torch.Tensor, *, rng: torch.Tensor | None) -> torch.Tensor:
        return spec.apply(params, x, cfg, rng=rng)

    loss, aux = task.loss(apply, params, batches[0], rng=None)
    logits = spec.apply(params, task.normalize(batches[0]["images"]), cfg)
    assert int(aux["weight"]) == 16
    assert int(aux["correct"]) == int((logits.argmax(-1) == batches[0]["labels"]).sum())
    assert float(loss) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, batches[0]["labels"].long()))
    )
    summary = task.summarize({"loss_sum": 8.0, "weight": 16.0, "correct": 12.0}, "test", whole=True)
    assert summary == {"loss": 0.5, "accuracy": 0.75, "images": 16.0}
