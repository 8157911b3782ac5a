"""Named data sources: what `python -m craft.main fetch NAME` gets, and where tasks find them.

Text sources feed the `lm` task (`DataConfig.source`: a name here or a text file's path); image
sources feed `classify` (`ImageDataConfig.source`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from craft.data.config import DataConfig
from craft.data.sources.got import fetch_got
from craft.data.sources.mnist import prepare_mnist
from craft.errors import ConfigError


def _fetch_got(data_dir: Path) -> str:
    scripts = fetch_got(data_dir)
    state = "downloaded" if scripts.downloaded else "cached"
    size, episodes = scripts.season.stat().st_size, len(scripts.episodes)
    return f"got: {scripts.season} ({size:,} bytes, {episodes} episodes, {state})"


def _fetch_mnist(data_dir: Path) -> str:
    prepared = prepare_mnist(data_dir)
    state = f"downloaded ({prepared.source})" if prepared.downloaded else "cached"
    return f"mnist: {prepared.path} (60,000 train and 10,000 test images, verified; {state})"


SOURCES: dict[str, Callable[[Path], str]] = {"got": _fetch_got, "mnist": _fetch_mnist}
"""Every named source: fetch (and verify) it under a data folder, return a one-line report."""


def fetch(source: str, data_dir: Path) -> str:
    """Fetch a named source (cached); a ConfigError lists the names for an unknown one."""
    if source not in SOURCES:
        raise ConfigError(f"unknown source {source!r}: expected one of {', '.join(SOURCES)}")
    return SOURCES[source](Path(data_dir))


def resolve_source(data: DataConfig) -> Path:
    """The text file behind `data.source`, fetching a named corpus when it is missing."""
    if data.source == "got":
        return fetch_got(Path(data.data_dir)).season
    if data.source in SOURCES:
        raise ConfigError(f"DataConfig.source = {data.source!r} is not a text source")
    return Path(data.source)


def prepared_images(source: str, data_dir: Path) -> tuple[Path, bool]:
    """The prepared folder of an image source (fetched when missing), and whether this call
    downloaded it."""
    if source != "mnist":
        raise ConfigError(f"unknown image source {source!r}: expected mnist")
    prepared = prepare_mnist(Path(data_dir))
    return prepared.path, prepared.downloaded
