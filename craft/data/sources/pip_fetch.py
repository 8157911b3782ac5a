"""Fetching one pinned file from PyPI with pip in hash-checking mode (nothing is installed).

pip verifies the sha256 before it prepares anything; callers check it again before use.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path


def pip_download(
    requirement: str, sha256: str, filename: str, target: Path, *, timeout_s: int
) -> str | None:
    """Download `requirement` (pinned, `--no-deps`) into `target`; None, or pip's last lines."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{requirement} --hash=sha256:{sha256}\n")
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
            "--disable-pip-version-check", "--no-input", "--retries", "1",
            "--timeout", str(timeout_s), "-r", str(requirements), "-d", tmp,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        fetched = Path(tmp) / filename
        if result.returncode != 0 or not fetched.is_file():
            return "\n".join((result.stderr or result.stdout).strip().splitlines()[-6:])
        fetched.replace(target)
    return None
