"""Named text sources: `DataConfig.source` is one of these names or a path to a text file."""

from __future__ import annotations

from pathlib import Path

from craft.data.config import DataConfig
from craft.data.sources.got import fetch_got

SOURCES = ("got",)


def resolve_source(data: DataConfig) -> Path:
    """The text file behind `data.source`, fetching a named corpus when it is missing."""
    if data.source == "got":
        return fetch_got(Path(data.data_dir)).season
    return Path(data.source)
