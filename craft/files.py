"""Writing files on a disk that may be full: recognising the error and saying what it needs.

A full disk (ENOSPC), a quota (EDQUOT) or a file-size limit (EFBIG, `ulimit -f`) surface as an
`OSError` from Python or as a `SafetensorError` whose text carries the OS error. Either way the
user gets one `DiskFullError` naming the file, the space it needed and the space left.
"""

from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path

from craft.errors import CraftError

_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_OS_ERROR = re.compile(r"os error (\d+)")


class DiskFullError(CraftError):
    """A file could not be written for lack of space (or a file-size or quota limit)."""


def holds_files(folder: Path) -> bool:
    """Whether `folder` exists as anything but an empty folder (a new output must not)."""
    return folder.exists() and (not folder.is_dir() or any(folder.iterdir()))


def is_out_of_space(error: BaseException) -> bool:
    """Whether `error` is a full disk, a quota or a file-size limit."""
    if isinstance(error, OSError) and error.errno in _OUT_OF_SPACE:
        return True
    match = _OS_ERROR.search(str(error))  # safetensors reports "(os error 28)" in its text
    return match is not None and int(match.group(1)) in _OUT_OF_SPACE


RESUME_HINT = (
    "Files written before it (earlier checkpoints) are intact; free some space and resume with "
    "--resume=latest"
)


def out_of_space(
    path: Path, needed_bytes: int | None, error: BaseException, then: str = RESUME_HINT
) -> DiskFullError:
    """The error to raise: which file, how much it needed, how much is free, what to do."""
    path = Path(path)
    reason = _reason(error)
    need = f"it needs about {_size(needed_bytes)}" if needed_bytes else "it needs a little more"
    try:
        free = f"{_size(shutil.disk_usage(path.parent).free)} are free there"
    except OSError:
        free = "the free space could not be read"
    return DiskFullError(f"no space to write {path} ({reason}): {need} and {free}. {then}")


def _reason(error: BaseException) -> str:
    code = error.errno if isinstance(error, OSError) else None
    if code is None and (match := _OS_ERROR.search(str(error))):
        code = int(match.group(1))
    names = {errno.ENOSPC: "disk full", errno.EDQUOT: "quota exceeded",
             errno.EFBIG: "file size limit"}  # fmt: skip
    return names.get(code, "out of space") if code is not None else "out of space"


def _size(count: int) -> str:
    if count >= 1 << 30:
        return f"{count / (1 << 30):.1f} GiB"
    if count >= 1 << 20:
        return f"{count / (1 << 20):.1f} MiB"
    return f"{count / 1024:.1f} KiB"
