"""The training run: bit-exact resume, Ctrl-C, non-finite loss, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from craft import config, tree
from craft.tasks import LanguageModeling
from craft.tracking import MetricsConfig, TrackingHook, make_trackers, read_metrics
from craft.train.loop import fit, make_setup
from tests.conftest import TINY_TEXT, CliRunner, craft_configs

TEXT = TINY_TEXT

TINY = """
RunConfig.name = 'tiny'
DataConfig.source = '{source}'
DataConfig.prepared_dir = '{source}.prepared'
GPTConfig.block_size = 16
GPTConfig.n_layer = 1
GPTConfig.n_head = 2
GPTConfig.n_embd = 16
GPTConfig.dropout = 0.1
TrainConfig.steps = {steps}
TrainConfig.batch_size = 4
TrainConfig.eval_every = 4
TrainConfig.checkpoint_every = 4
TrainConfig.sample_every = 0
TextSampleConfig.tokens = 10
TrainConfig.compile = False
MetricsConfig.progress_bar = False
MetricsConfig.wandb = 'disabled'
Schedule.total_steps = 12
Schedule.warmup_steps = 2
"""


def run_in_process(run_dir: Path, text_file: Path, steps: int, resume: Path | None = None) -> dict:
    config.parse([], [TINY.format(source=text_file, steps=steps)])
    configs = craft_configs()
    LanguageModeling.prepare(configs)
    setup = make_setup(configs, LanguageModeling.open(configs), seed=0)
    metrics_cfg = configs["MetricsConfig"]
    assert isinstance(metrics_cfg, MetricsConfig)
    hook = TrackingHook(make_trackers(metrics_cfg, run_dir, {}))
    return fit(setup, run_dir, hooks=[hook], resume=resume)


def test_resume_is_bit_exact(tmp_path: Path, text_file: Path) -> None:
    straight = run_in_process(tmp_path / "straight", text_file, steps=12)
    half = run_in_process(tmp_path / "resumed", text_file, steps=8)
    assert half["status"] == "finished" and half["steps"] == 8
    resumed = run_in_process(tmp_path / "resumed", text_file, steps=12, resume="latest")
    assert resumed["start_step"] == 8 and resumed["steps"] == 12

    def final_params(run: str) -> list[torch.Tensor]:
        from safetensors.torch import load_file

        return [
            v
            for k, v in load_file(tmp_path / run / "checkpoints/step-00000012.safetensors").items()
            if k.startswith(("params.", "opt_state.", "rng", "step", "loss_scale"))
        ]

    for a, b in zip(final_params("straight"), final_params("resumed"), strict=True):
        assert torch.equal(a, b)

    def rows(run: str) -> list[dict]:
        keep = ("step", "train/loss", "train/lr", "train/grad_norm", "val/loss")
        return [
            {k: r[k] for k in keep if k in r} for r in read_metrics(tmp_path / run) if r["step"] > 8
        ]

    assert rows("straight") == rows("resumed")
    assert straight["metrics"]["val/loss"] == resumed["metrics"]["val/loss"]


def test_cli_train_resume_evaluate_generate_plot(
    run_cli: CliRunner, tmp_path: Path, text_file: Path
) -> None:
    (tmp_path / "tiny.gin").write_text(
        TINY.format(source=text_file, steps=8)
        + "TrainConfig.sample_every = 4\nTextSampleConfig.prompt = 'SPEAKER_1:'\n"
        + "TrainConfig.hooks = ['tests.hooks_for_tests.RecordSteps']\n"
    )
    trained = run_cli("--gin_file=tiny.gin")
    assert trained.returncode == 0, trained.stderr
    assert "status: finished after 8 steps" in trained.stdout
    [run_dir] = list((tmp_path / "outputs/experiments/tiny").glob("*/*"))
    for name in ("config.gin", "config.json", "samples.txt", "loss.png", "logs/metrics.jsonl"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "user_hook_steps.txt").read_text().split() == [str(s) for s in range(1, 9)]
    assert "=== step 4 ===\nSPEAKER_1:" in (run_dir / "samples.txt").read_text()
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("*.safetensors"))
    assert ckpts == ["step-00000004.safetensors", "step-00000008.safetensors"]
    assert (run_dir / "checkpoints/tokenizer.json").is_file()

    more = run_cli("--gin_file=tiny.gin", "--gin.TrainConfig.steps=12", "--resume=latest")
    assert more.returncode == 0, more.stderr
    assert "status: finished after 12 steps" in more.stdout
    assert f"run folder: {run_dir.relative_to(tmp_path)}" in more.stdout  # the same folder

    evaluated = run_cli(
        "evaluate", f"--checkpoint={run_dir}", "--split=test", f"--data_dir={text_file}.prepared"
    )
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["split"] == "test" and result["loss"] > 0
    assert result["bits_per_char"] == pytest.approx(result["bits_per_token"])  # char level

    generated = run_cli(
        "generate", f"--checkpoint={run_dir}", "--prompt=SPEAKER_2:", "--max_new_tokens=30",
        "--temperature=0",
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    assert (
        generated.stdout.startswith("SPEAKER_2:")
        and len(generated.stdout) >= len("SPEAKER_2:") + 30
    )
    again = run_cli(
        "generate",
        f"--checkpoint={run_dir}",
        "--prompt=SPEAKER_2:",
        "--max_new_tokens=30",
        "--temperature=0",
    )
    assert again.stdout == generated.stdout  # greedy is deterministic

    (run_dir / "loss.png").unlink()
    plotted = run_cli("plot", f"--run={run_dir}")
    assert (
        plotted.returncode == 0 and (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--temperature=-1"], "temperature must be >= 0"),
        (["--top_p=1.5"], "top_p must lie in (0, 1]"),
        (["--top_p=0"], "top_p must lie in (0, 1]"),
        (["--top_k=0"], "top_k must be >= 1"),
        (["--prompt=Zebra"], "the char vocabulary lacks these characters: 'Z' (U+005A)"),
    ],
)
def test_generate_errors(
    run_cli: CliRunner, tmp_path: Path, text_file: Path, flags: list[str], message: str
) -> None:
    run_in_process(tmp_path / "run", text_file, steps=4)
    result = run_cli("generate", f"--checkpoint={tmp_path / 'run'}", *flags)
    assert result.returncode in (1, 2)
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_generate_without_tokenizer_says_so(
    run_cli: CliRunner, tmp_path: Path, text_file: Path
) -> None:
    run_in_process(tmp_path / "run", text_file, steps=4)
    (tmp_path / "run/checkpoints/tokenizer.json").unlink()
    result = run_cli("generate", f"--checkpoint={tmp_path / 'run'}")
    assert result.returncode == 1
    assert "has no tokenizer beside it" in result.stderr


@pytest.mark.parametrize(
    ("hook", "code", "status"),
    [("InterruptAtStep3", 130, "interrupted"), ("TerminateAtStep3", 143, "terminated")],
    ids=["ctrl-c", "sigterm"],
)
def test_stopping_saves_a_checkpoint_and_exits(
    run_cli: CliRunner, tmp_path: Path, text_file: Path, hook: str, code: int, status: str
) -> None:
    """Ctrl-C or SIGTERM during step 3: a checkpoint at 3, the summary, status 130 or 143
    (as a shell reports those signals), and a resume that finishes the run."""
    (tmp_path / "tiny.gin").write_text(
        TINY.format(source=text_file, steps=12)
        + f"TrainConfig.hooks = ['tests.hooks_for_tests.{hook}']\n"
    )
    result = run_cli("--gin_file=tiny.gin")
    assert result.returncode == code, result.stderr
    assert f"status: {status} after 3 steps" in result.stdout
    assert "Traceback" not in result.stderr
    [run_dir] = list((tmp_path / "outputs/experiments/tiny").glob("*/*"))
    assert (run_dir / "checkpoints/step-00000003.safetensors").is_file()
    assert [row["step"] for row in read_metrics(run_dir) if "train/loss" in row] == [1, 2, 3]
    (tmp_path / "tiny.gin").write_text(TINY.format(source=text_file, steps=12))
    resumed = run_cli("--gin_file=tiny.gin", "--resume=latest")
    assert resumed.returncode == 0, resumed.stderr
    assert "status: finished after 12 steps" in resumed.stdout


def test_non_finite_loss_stops_and_names_the_step(
    run_cli: CliRunner, tmp_path: Path, text_file: Path
) -> None:
    (tmp_path / "tiny.gin").write_text(
        TINY.format(source=text_file, steps=12)
        + "TrainConfig.checkpoint_every = 1\nTrainConfig.clip_norm = None\n"
        + "Schedule.kind = 'constant'\nSchedule.peak_lr = 1e35\n"
    )
    result = run_cli("--gin_file=tiny.gin")
    assert result.returncode == 1
    found = [line for line in result.stderr.splitlines() if "the loss became" in line]
    assert found and "stopping. The last good checkpoint is" in found[0]
    step = int(found[0].split(" at step ")[1].split(";")[0])
    [run_dir] = list((tmp_path / "outputs/experiments/tiny").glob("*/*"))
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("*.safetensors"))
    assert kept[-1] == f"step-{step - 1:08d}.safetensors"


def test_vocab_mismatch_and_context_errors(
    run_cli: CliRunner, tmp_path: Path, text_file: Path
) -> None:
    (tmp_path / "tiny.gin").write_text(TINY.format(source=text_file, steps=4))
    wrong_vocab = run_cli("--gin_file=tiny.gin", "--gin.GPTConfig.vocab_size=7")
    assert wrong_vocab.returncode == 2
    assert "GPTConfig.vocab_size = 7, but the dataset's vocabulary has" in wrong_vocab.stderr
    too_long = run_cli("--gin_file=tiny.gin", "--gin.DataConfig.window=32")
    assert "DataConfig.window = 32 exceeds GPTConfig's longest context (16)" in too_long.stderr
    assert not list(tmp_path.glob("outputs/experiments/tiny/*/*/checkpoints/*.safetensors"))


def test_state_tree_names_are_stable() -> None:
    """Checkpoint keys are the dotted names of the state; renaming them breaks old checkpoints."""
    from craft.models import gpt
    from craft.optim import AdamW
    from craft.train import init_state

    cfg = gpt.GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4)
    names = list(tree.to_dotted(init_state(gpt.init(cfg, seed=0), AdamW())._asdict()))
    assert names[:3] == [
        "params.tok.embedding",
        "params.pos.embedding",
        "params.blocks.0.ln1.scale",
    ]
    assert names[-4:] == ["step", "rng", "loss_scale.scale", "loss_scale.good_steps"]


def test_mfu_counts_this_process_share_of_the_batch() -> None:
    from craft.train.loop import mfu

    one = mfu(6e6, batch_size=64, ranks=1, seconds=0.5, peak=1e12)
    assert one == pytest.approx(6e6 * 64 / 0.5 / 1e12)
    # Two ranks each do half the global batch in the same time on their own device.
    assert mfu(6e6, batch_size=64, ranks=2, seconds=0.5, peak=1e12) == pytest.approx(one / 2)


def test_fetch_names_the_sources_it_serves(run_cli: CliRunner) -> None:
    result = run_cli("fetch", "imagenet")
    assert result.returncode == 2
    assert "unknown source 'imagenet': expected one of got, mnist" in result.stderr
