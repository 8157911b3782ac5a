"""The command line, through subprocesses, on tiny inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from craft.models import gpt, rnn
from tests.conftest import REPO, CliRunner

TEXT = "".join(f"SPEAKER_{i % 5}: words of line {i}.\n" for i in range(300))
# The main job trains: these keep it to a few eager steps of a tiny model.
QUICK = (
    "--gin.TrainConfig.steps=2", "--gin.TrainConfig.compile=False",
    "--gin.TextSampleConfig.tokens=5", "--gin.MetricsConfig.wandb=disabled",
    "--gin.GPTConfig.n_layer=1", "--gin.GPTConfig.n_embd=16", "--gin.GPTConfig.n_head=2",
    "--gin.Schedule.warmup_steps=1", "--gin.Schedule.total_steps=2",
)  # fmt: skip


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT)
    return path


def test_help_lists_the_commands(run_cli: CliRunner) -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("run", "fetch", "prepare", "train_tokenizer", "show_config"):
        assert command in result.stdout + result.stderr  # fire prints help to stderr


def test_unknown_command_gives_fire_usage_not_a_traceback(run_cli: CliRunner) -> None:
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert "Could not consume arg: frobnicate" in result.stderr
    assert "Usage:" in result.stderr and "Traceback" not in result.stderr


def test_unknown_flag_is_refused_before_the_command_runs(
    run_cli: CliRunner, tmp_path: Path
) -> None:
    result = run_cli("prepare", "--input=x.txt", "--colour=red")
    assert result.returncode == 2
    assert "prepare takes no flag --colour" in result.stderr and "--split_ratios" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_show_config_prints_the_effective_config(run_cli: CliRunner, tmp_path: Path) -> None:
    override = tmp_path / "override.gin"
    override.write_text("DataConfig.window = 32\n")
    result = run_cli(
        "show_config", "--gin_file=gin/got_char.gin", f"--gin_file={override}",
        "--gin.TokenizerConfig.vocab_size=512", cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "DataConfig.window = 32" in result.stdout
    assert "DataConfig.tokenizer = 'char'" in result.stdout
    assert "TokenizerConfig.vocab_size = 512" in result.stdout
    assert "RunConfig.name = 'got_char'" in result.stdout


def test_show_config_counts_the_chosen_model(run_cli: CliRunner) -> None:
    """The count follows TrainConfig.model (the defaults of each model's config here)."""
    gpt_size = run_cli("show_config", "--gin.GPTConfig.vocab_size=76", cwd=REPO)
    expected = gpt.param_count(gpt.GPTConfig(vocab_size=76))
    assert gpt_size.stdout.splitlines()[-1] == f"# GPT: {expected:,} parameters (vocab 76)"
    rnn_size = run_cli(
        "show_config", "--gin.TrainConfig.model=rnn", "--gin.RNNConfig.vocab_size=76", cwd=REPO
    )
    assert rnn_size.returncode == 0, rnn_size.stderr
    expected = rnn.param_count(rnn.RNNConfig(vocab_size=76))
    assert rnn_size.stdout.splitlines()[-1] == f"# RNN: {expected:,} parameters (vocab 76)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gin_file=missing.gin"], "gin file not found: missing.gin"),
        (
            ["--gin.DataConfig.window=-4"],
            "DataConfig.window = -4 (flag --gin.DataConfig.window=-4): "
            "Input should be greater than 0",
        ),
        (
            ["--gin.DataConfg.block_size=4"],
            "unknown configurable 'DataConfg'; did you mean 'DataConfig'",
        ),
        (["--gin_param=DataConfig.window = ("], "gin syntax error"),
        (
            ["--gin.TrainConfig.compile_mode=reduce-overhead", "--gin.TrainConfig.accum_steps=2"],
            "compile_mode='reduce-overhead' replays CUDA graphs, which needs accum_steps=1",
        ),
    ],
)
def test_bad_config_stops_before_any_work(
    run_cli: CliRunner, tmp_path: Path, args: list[str], message: str
) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "data").exists()


def test_bad_gin_file_names_its_line(run_cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "bad.gin").write_text(
        "RunConfig.name = 'x'\nDataConfig.split_ratios = (0.5, 0.5, 0.5)\n"
    )
    result = run_cli("--gin_file=bad.gin")
    assert result.returncode == 2
    assert "bad.gin:2): split ratios must sum to 1" in result.stderr


def test_prepare_writes_the_dataset_then_hits_the_cache(
    run_cli: CliRunner, text_file: Path
) -> None:
    args = ("prepare", f"--input={text_file}", "--output_dir=out", "--type=char", "--window=8")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "out: prepared; char tokenizer" in first.stdout
    meta = json.loads((text_file.parent / "out/meta.json").read_text())
    assert sum(meta["tokens"].values()) == len(TEXT)
    second = run_cli(*args)
    assert "out: cached" in second.stdout


def test_prepare_subword_with_split_ratios(run_cli: CliRunner, text_file: Path) -> None:
    result = run_cli(
        "prepare", f"--input={text_file}", "--output_dir=sub", "--type=subword",
        "--vocab_size=300", "--split_ratios=0.8,0.1,0.1", "--window=8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    meta = json.loads((text_file.parent / "sub/meta.json").read_text())
    assert meta["split_ratios"] == [0.8, 0.1, 0.1] and meta["vocab_size"] == 300


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--split_ratios=-0.1,0.6,0.5"],
            "(flag --split_ratios): split ratios must not be negative",
        ),
        (["--split_ratios=0.5,0.2,0.2"], "split ratios must sum to 1"),
        (["--type=words"], "(flag --type): Input should be 'char' or 'subword'"),
        (["--window=4096"], "fewer than one window (window=4096"),
        (
            ["--type=subword", "--vocab_size=90000"],
            "vocab_size=90000 is too large for this text: the largest that fits is",
        ),
    ],
)
def test_prepare_errors(
    run_cli: CliRunner, text_file: Path, flags: list[str], message: str
) -> None:
    result = run_cli("prepare", f"--input={text_file}", "--output_dir=out", *flags)
    assert result.returncode in (1, 2)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_prepare_input_errors(run_cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bad.txt").write_bytes(b"ok\xff\xfe")
    cases = {
        "missing.txt": "input file not found: missing.txt",
        "empty.txt": "input file is empty: empty.txt",
        "bad.txt": "bad.txt is not UTF-8: byte(s) ff at offset 2",
    }
    for name, message in cases.items():
        result = run_cli("prepare", f"--input={name}", "--output_dir=out")
        assert result.returncode == 1 and message in result.stderr, result.stderr


def test_train_tokenizer_saves_a_model(run_cli: CliRunner, text_file: Path) -> None:
    result = run_cli(
        "train_tokenizer", f"--input={text_file}", "--output=tok/sp.model", "--vocab_size=300"
    )
    assert result.returncode == 0, result.stderr
    assert "bpe SentencePiece, 300 pieces" in result.stdout
    assert (text_file.parent / "tok/sp.model").stat().st_size > 0


def test_train_tokenizer_streams_text_without_line_breaks(
    run_cli: CliRunner, tmp_path: Path
) -> None:
    """One 60 KB line (no line breaks): read in chunks and cut into sentences SentencePiece
    keeps, instead of its `[!sentences_.empty()]`; a missing input is named."""
    flat = tmp_path / "flat.txt"
    flat.write_text(" ".join(f"word{i % 97} said plainly" for i in range(4000)))
    result = run_cli("train_tokenizer", f"--input={flat}", "--output=sp.model", "--vocab_size=300")
    assert result.returncode == 0, result.stderr
    assert "bpe SentencePiece, 300 pieces" in result.stdout
    missing = run_cli("train_tokenizer", "--input=nowhere.txt", "--output=sp.model")
    assert missing.returncode == 1 and "input file not found: nowhere.txt" in missing.stderr


def test_main_job_on_a_text_file_writes_the_run_folder(
    run_cli: CliRunner, tmp_path: Path, text_file: Path
) -> None:
    (tmp_path / "tiny.gin").write_text(
        "RunConfig.name = 'tiny'\n"
        f"DataConfig.source = '{text_file}'\n"
        "DataConfig.tokenizer = 'subword'\n"
        "DataConfig.window = 8\n"
        "TokenizerConfig.vocab_size = 290\n"
    )
    result = run_cli("--gin_file=tiny.gin", "--gin.RunConfig.seed=3", *QUICK)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data/prepared/tiny-bpe290/meta.json").is_file()
    [run_dir] = list((tmp_path / "outputs/experiments/tiny").glob("*/*"))
    assert "RunConfig.seed = 3" in (run_dir / "config.gin").read_text()
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["DataConfig"]["source"] == str(text_file)
    assert saved["TokenizerConfig"]["vocab_size"] == 290
    # The saved config.gin runs again to the same effective config.
    again = run_cli("show_config", f"--gin_file={run_dir / 'config.gin'}")
    assert again.stdout.startswith((run_dir / "config.gin").read_text())
    assert "# GPT: " in again.stdout


@pytest.mark.network
def test_fetch_got_then_main_job(run_cli: CliRunner, tmp_path: Path, got_data_dir: Path) -> None:
    shutil.copytree(got_data_dir, tmp_path / "data")
    fetched = run_cli("fetch", "got")
    assert fetched.returncode == 0, fetched.stderr
    assert "10 episodes, cached" in fetched.stdout
    result = run_cli(f"--gin_file={REPO / 'gin/got_char.gin'}", *QUICK)
    assert result.returncode == 0, result.stderr
    assert "data/prepared/got-char: prepared; char tokenizer" in result.stdout
    meta = json.loads((tmp_path / "data/prepared/got-char/meta.json").read_text())
    assert meta["split_ratios"] == [0.9, 0.05, 0.05]
    assert 250_000 < sum(meta["tokens"].values()) < 290_000


@pytest.mark.parametrize("command", ["evaluate", "generate"])
def test_a_bad_device_is_refused_before_the_checkpoint_is_read(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from craft.main import main

    assert main([command, "--checkpoint=nowhere", "--device=tpu"]) == 2
    assert capsys.readouterr().err == (
        "craft: error: --device must be auto, cpu or cuda, got 'tpu'\n"
    )
    if not torch.cuda.is_available():
        assert main([command, "--checkpoint=nowhere", "--device=cuda"]) == 2
        assert capsys.readouterr().err == (
            "craft: error: --device=cuda: no CUDA device is available here\n"
        )


@pytest.mark.slow
def test_a_compiled_run_says_it_compiles_and_records_what(
    run_cli: CliRunner, tmp_path: Path, text_file: Path
) -> None:
    (tmp_path / "tiny.gin").write_text(
        f"RunConfig.name = 'tiny'\nDataConfig.source = '{text_file}'\nDataConfig.window = 8\n"
    )
    result = run_cli("--gin_file=tiny.gin", *QUICK, "--gin.TrainConfig.compile=True")
    assert result.returncode == 0, result.stderr
    assert "craft: compiling the step (regions): the first step waits" in result.stderr
    [run_dir] = list((tmp_path / "outputs/experiments/tiny").glob("*/*"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["compile"] == "regions"
    assert summary["first_step_s"] > 0
