"""Reading a training text: UTF-8, with errors that say where and what to do."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from craft.errors import DataError

Errors = Literal["strict", "replace"]


def read_text(path: Path, errors: Errors = "strict") -> tuple[str, str]:
    """Return (text, sha256 of the file's bytes); a missing, empty or non-UTF-8 file is an error.

    With `errors="replace"`, bytes that are not UTF-8 become U+FFFD instead of failing.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"input file not found: {path}")
    if not path.is_file():
        raise DataError(f"input is not a file: {path}")
    raw = path.read_bytes()
    if not raw:
        raise DataError(f"input file is empty: {path}")
    try:
        text = raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as error:
        bad = raw[error.start : error.end].hex(" ")
        raise DataError(
            f"{path} is not UTF-8: byte(s) {bad} at offset {error.start} ({error.reason}); "
            "convert the file to UTF-8, or pass --errors=replace to substitute U+FFFD"
        ) from None
    return text, hashlib.sha256(raw).hexdigest()


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
