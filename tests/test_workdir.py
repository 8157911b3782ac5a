"""Runs, `evaluate` and `generate` work from any working folder."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import CliRunner
from tests.test_train import TEXT, TINY


def test_craft_configs_are_found_from_outside_the_repository(
    run_cli: CliRunner, tmp_path: Path
) -> None:
    """`gin/got_char.gin` (and the base it includes) from a folder that has no gin/."""
    result = run_cli("show_config", "--gin_file=gin/got_char.gin", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "RunConfig.name = 'got_char'" in result.stdout


def test_evaluate_and_generate_from_another_folder(run_cli: CliRunner, tmp_path: Path) -> None:
    """The run keeps its data in `data/` of the folder it ran in; evaluation from elsewhere
    finds it through the run folder's place, without --data_dir."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    (work / "tiny.txt").write_text(TEXT)
    gin = TINY.format(source=work / "tiny.txt", steps=4).replace("DataConfig.prepared_dir", "# ")
    (work / "tiny.gin").write_text(gin)
    trained = run_cli("--gin_file=tiny.gin", cwd=work)
    assert trained.returncode == 0, trained.stderr
    [run_dir] = list((work / "outputs/experiments/tiny").glob("*/*"))
    assert (work / "data/prepared/tiny-char/meta.json").is_file()

    evaluated = run_cli("evaluate", f"--checkpoint={run_dir}", cwd=elsewhere)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["loss"] > 0
    generated = run_cli(
        "generate", f"--checkpoint={run_dir}", "--max_new_tokens=5", "--prompt=SPEAKER",
        cwd=elsewhere,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.startswith("SPEAKER")
    assert not (elsewhere / "data").exists() and not (elsewhere / "outputs").exists()
