"""The diffusion task end to end on synthetic digits: training, resume, sampling, and the
messages of bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from craft import config
from craft.data.config import ImageDataConfig
from craft.inference import load_for_inference
from craft.judge import JudgeRecipe
from craft.launch import train
from craft.main import main
from craft.sample_scores import score_samples
from craft.tasks import Diffusion
from craft.tasks.diffusion import DiffusionConfig
from tests.conftest import CliRunner, craft_configs
from tests.digits import write_digits
from tests.test_train import run_in_process

TINY = """
include 'mnist_diffusion.gin'
RunConfig.name = 'tinydiff'
ImageDataConfig.val_size = 100
UNetConfig.channels = 8
UNetConfig.channel_mults = (1, 2)
UNetConfig.blocks_per_level = 1
UNetConfig.time_dim = 16
UNetConfig.groups = 4
UNetConfig.attention = False
DiffusionConfig.timesteps = 50
DiffusionConfig.sample_steps = 4
DiffusionConfig.preview_per_class = 2
TrainConfig.steps = 4
TrainConfig.batch_size = 16
TrainConfig.compile = False
TrainConfig.eval_every = 2
TrainConfig.eval_batches = 2
TrainConfig.eval_batch_size = 50
TrainConfig.checkpoint_every = 2
TrainConfig.keep_checkpoints = 5
TrainConfig.sample_every = 2
Schedule.warmup_steps = 2
MetricsConfig.progress_bar = False
MetricsConfig.wandb = 'disabled'
"""
PNG = b"\x89PNG\r\n\x1a\n"


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step tiny diffusion run on synthetic digits, shared by the module's tests."""
    root = tmp_path_factory.mktemp("diffusion")
    write_digits(root / "data")
    (root / "tiny.gin").write_text(TINY)
    _train_in(root, [])
    return root


def _train_in(root: Path, params: list[str], resume: str | None = None) -> dict:
    """Train the tiny config in-process from `root` (paths in the config are relative)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        config.reset()
        config.parse([str(root / "tiny.gin")], params)
        return train(craft_configs(), resume)


def _checkpoint(root: Path, step: int, name: str = "tinydiff") -> Path:
    [found] = (root / "outputs/experiments" / name).glob(f"*/*/checkpoints/step-{step:08d}*")
    return found


def test_a_run_trains_checkpoints_the_ema_and_draws_grids(trained: Path) -> None:
    [run_dir] = (trained / "outputs/experiments/tinydiff").glob("*/*")
    assert (run_dir / "samples.png").read_bytes()[:8] == PNG
    tensors = load_file(_checkpoint(trained, 4))
    ema = {k: v for k, v in tensors.items() if k.startswith("ema.")}
    assert ema and set(k[4:] for k in ema) == {k[7:] for k in tensors if k.startswith("params.")}
    rows = [json.loads(line) for line in (run_dir / "logs/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val/loss" in r] == [2, 4]
    assert not any("test/loss" in r for r in rows) and "train/images_per_s" in rows[0]


def test_resume_is_bit_exact(trained: Path, tmp_path: Path) -> None:
    """2 steps, then 2 more from the checkpoint, equal the 4 straight steps: params, optimizer
    state and EMA (the noise, timesteps and label drops come from the step's keys)."""
    roots = [tmp_path / "straight", tmp_path / "resumed"]
    for root in roots:
        root.mkdir()
        (root / "data").symlink_to(trained / "data")
        (root / "tiny.gin").write_text(TINY)
    constant = "Schedule.kind = 'constant'"  # the same lr at every step, whatever the length
    _train_in(roots[0], [constant])
    _train_in(roots[1], [constant, "TrainConfig.steps = 2"])
    _train_in(roots[1], [constant], resume="latest")
    straight, resumed = load_file(_checkpoint(roots[0], 4)), load_file(_checkpoint(roots[1], 4))
    assert straight.keys() == resumed.keys()
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name


def test_the_draws_do_not_depend_on_the_split_into_micro_batches(trained: Path) -> None:
    """Each row's timestep, noise and label drop follow its own key: the loss of a batch is
    the mean of its halves' losses."""
    config.reset()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(trained)
        task = Diffusion.open(
            {"ImageDataConfig": ImageDataConfig(val_size=100),
             "DiffusionConfig": DiffusionConfig(timesteps=50, sample_steps=4)}
        )  # fmt: skip
    batch = task.train_batch(seed=0, step=0, size=8)
    keys = torch.arange(8) * 7919 + 1

    def apply(params: object, inputs: dict, rng: object = None) -> torch.Tensor:
        return torch.tanh(inputs["images"]) * inputs["t"].view(-1, 1, 1, 1) / 50

    whole, _ = task.loss(apply, {}, batch, rng=keys)
    halves = [
        task.loss(apply, {}, {k: v[s] for k, v in batch.items()}, rng=keys[s])[0]
        for s in (slice(0, 4), slice(4, 8))
    ]
    torch.testing.assert_close(whole, (halves[0] + halves[1]) / 2)


def test_sample_writes_a_grid_and_tensors(trained: Path, tmp_path: Path) -> None:
    output = tmp_path / "grid.png"
    args = ["sample", f"--checkpoint={_checkpoint(trained, 4)}", "--num_samples=12",
            "--steps=3", "--guidance=1.5", "--save_tensors", f"--output={output}"]  # fmt: skip
    assert main(args) == 0
    assert output.read_bytes()[:8] == PNG
    saved = load_file(output.with_suffix(".safetensors"))
    assert saved["images"].shape == (12, 1, 28, 28)
    assert saved["labels"].tolist() == [i % 10 for i in range(12)]
    assert float(saved["images"].min()) >= 0.0 and float(saved["images"].max()) <= 1.0
    again = tmp_path / "again.png"
    assert main([*args[:-1], f"--output={again}"]) == 0  # the same seed: the same images
    assert torch.equal(load_file(again.with_suffix(".safetensors"))["images"], saved["images"])


def test_sample_of_one_label(trained: Path, tmp_path: Path) -> None:
    output = tmp_path / "sevens.png"
    args = ["sample", f"--checkpoint={_checkpoint(trained, 4)}", "--num_samples=3",
            "--label=7", "--steps=2", "--save_tensors", f"--output={output}"]  # fmt: skip
    assert main(args) == 0
    assert load_file(output.with_suffix(".safetensors"))["labels"].tolist() == [7, 7, 7]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--label=12"], "--label=12 is not a class of this model: give 0 to 9"),
        (["--label=-1"], "--label=-1 is not a class of this model: give 0 to 9"),
        (["--steps=0"], "--steps=0 must be a whole number from 1 to 50"),
        (["--steps=51"], "--steps=51 must be a whole number from 1 to 50"),
        (["--guidance=-1"], "--guidance=-1 must be a number >= 0"),
        (["--sampler=euler"], "--sampler='euler' is not a sampler: give ddim or ddpm"),
        (["--num_samples=0"], "--num_samples=0 must be a whole number >= 1"),
        (["--output=grid.jpg"], "must name a .png file"),
    ],
)
def test_bad_sample_flags_name_the_problem(
    trained: Path, tmp_path: Path, flags: list[str], message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        code, _, err = run_main(["sample", f"--checkpoint={_checkpoint(trained, 4)}", *flags],
                                  capsys)  # fmt: skip
    assert code != 0 and message in err, err
    assert not list(tmp_path.glob("*.png"))  # nothing written


def test_a_diffusion_checkpoint_given_to_generate_points_to_sample(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main(["generate", f"--checkpoint={_checkpoint(trained, 4)}"], capsys)
    assert code == 2 and "trained for the 'diffusion' task, which takes no text" in err
    assert "use sample to draw its images" in err


def test_a_text_checkpoint_given_to_sample_points_to_generate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "tiny.txt"
    text.write_text("".join(f"SPEAKER_{i % 5}: line {i} of the play.\n" for i in range(300)))
    run_in_process(tmp_path / "run", text, steps=2)
    code, _, err = run_main(["sample", f"--checkpoint={tmp_path / 'run'}"], capsys)
    assert code == 2
    assert "sample draws images from a diffusion checkpoint" in err
    assert "trained for the 'lm' task; use generate (text)" in err


def test_the_cli_trains_from_a_gin_file(run_cli: CliRunner, trained: Path, tmp_path: Path) -> None:
    (tmp_path / "data").symlink_to(trained / "data")
    (tmp_path / "tiny.gin").write_text(TINY)
    done = run_cli("--gin_file=tiny.gin", "--gin.TrainConfig.steps=2")
    assert done.returncode == 0, done.stderr
    assert "task diffusion; model unet" in done.stdout
    assert "status: finished after 2 steps" in done.stdout


def test_samples_are_scored_by_the_judge(trained: Path) -> None:
    """The judge (a tiny recipe here) trains on first use and scores the samples: an untrained
    generator is farther from the test images than the training images are."""
    loaded = load_for_inference(_checkpoint(trained, 4))
    task = loaded.task(str(trained / "data"))
    assert isinstance(task, Diffusion)
    recipe = JudgeRecipe(steps=20, batch_size=32, val_size=100, warmup_steps=2, compile=False)
    scores = score_samples(
        loaded, task, num_samples=30, steps=3, guidance=1.0, sampler=None, seed=0,
        batch_size=16, device=torch.device("cpu"), recipe=recipe,
    )  # fmt: skip
    assert 0.0 <= scores["class_accuracy"] <= 1.0
    assert scores["frechet_distance"] > scores["frechet_floor"] >= 0.0
    assert (scores["num_samples"], scores["steps"], scores["guidance"]) == (30, 3, 1.0)
    assert scores["sampler"] == "ddim"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--steps=0"], "--steps=0 must be a whole number from 1 to 50"),
        (["--num_samples=100000"], "--num_samples=100000 exceeds the 200 real images"),
        (["--guidance=-2"], "--guidance=-2 must be a number >= 0"),
    ],
)
def test_bad_evaluate_flags_name_the_problem(
    trained: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["evaluate", f"--checkpoint={_checkpoint(trained, 4)}",
            f"--data_dir={trained / 'data'}", *flags]  # fmt: skip
    code, _, err = run_main(args, capsys)
    assert code == 2 and message in err, err


def test_a_classifier_checkpoint_given_to_sample_points_to_evaluate(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data").symlink_to(trained / "data")
    (tmp_path / "digits.gin").write_text(CLASSIFIER)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        config.parse(["digits.gin"], [])
        assert train(craft_configs())["status"] == "finished"
        [run_dir] = (tmp_path / "outputs/experiments/digits").glob("*/*")
        code, _, err = run_main(["sample", f"--checkpoint={run_dir}"], capsys)
    assert code == 2 and "sample draws images from a diffusion checkpoint" in err
    assert "trained for the 'classify' task; use evaluate (a classifier)" in err


CLASSIFIER = """
include 'mnist.gin'
RunConfig.name = 'digits'
ImageDataConfig.val_size = 100
CNNConfig.channels = (4,)
CNNConfig.hidden = 0
TrainConfig.steps = 2
TrainConfig.batch_size = 16
TrainConfig.compile = False
TrainConfig.eval_every = 0
TrainConfig.checkpoint_every = 0
TrainConfig.sample_every = 0
Schedule.warmup_steps = 1
MetricsConfig.progress_bar = False
MetricsConfig.wandb = 'disabled'
"""
