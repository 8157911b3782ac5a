"""Data files on disk: reading a training text (UTF-8, in bounded chunks, with errors that say
where and what to do), hashing, and writing files safely when processes share a folder.

Writers never share a temporary name: each file is written under a unique name beside its target
(`tempfile.mkstemp`), fsynced and renamed over it, so readers see the old file or the new one.
Work that writes several files of one folder holds the folder's lock (`folder_lock`), so two
`prepare` or `fetch` runs on one folder take turns instead of interleaving.
"""

from __future__ import annotations

import codecs
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from craft.errors import DataError

Errors = Literal["strict", "replace"]
CHUNK_BYTES = 4 << 20  # bytes read and decoded at a time: memory stays bounded
LOCK_FILE = ".lock"


def check_input(path: Path) -> None:
    """A missing, non-regular or empty input file is an error that names it."""
    if not path.exists():
        raise DataError(f"input file not found: {path}")
    if not path.is_file():
        raise DataError(f"input is not a file: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"input file is empty: {path}")


def iter_text(
    path: Path, errors: Errors = "strict", *, chunk_bytes: int | None = None, digest: Any = None
) -> Iterator[str]:
    """The decoded text of `path` in chunks of at most `chunk_bytes` (default CHUNK_BYTES)
    characters; joined, they are exactly the whole file decoded at once. `digest` (a hashlib
    object) sees every byte read.

    With `errors="replace"`, bytes that are not UTF-8 become U+FFFD instead of failing.
    """
    path = Path(path)
    check_input(path)
    decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)
    offset = 0  # bytes read before this chunk
    with open(path, "rb") as handle:
        while True:
            raw = handle.read(chunk_bytes or CHUNK_BYTES)
            if digest is not None:
                digest.update(raw)
            pending = len(decoder.getstate()[0])  # an incomplete character from the last chunk
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as error:
                bad = error.object[error.start : error.end].hex(" ")
                raise DataError(
                    f"{path} is not UTF-8: byte(s) {bad} at offset {offset - pending + error.start}"
                    f" ({error.reason}); convert the file to UTF-8, or pass --errors=replace to "
                    "substitute U+FFFD"
                ) from None
            if text:
                yield text
            if not raw:
                return
            offset += len(raw)


def read_text(path: Path, errors: Errors = "strict") -> tuple[str, str]:
    """Return (text, sha256 of the file's bytes); a missing, empty or non-UTF-8 file is an error.

    The whole text is held in memory: `prepare` streams with `iter_text` instead.
    """
    digest = hashlib.sha256()
    text = "".join(iter_text(Path(path), errors, digest=digest))
    return text, digest.hexdigest()


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class PendingFile:
    """A file written under a unique temporary name beside `path`; `commit` fsyncs it and renames
    it over `path`, `discard` deletes it. Nothing at `path` changes before `commit`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        prefix = f".{self.path.name}."
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=prefix, suffix=".tmp")
        except OSError as error:
            raise DataError(f"cannot write {self.path} ({error.strerror})") from None
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it private; keep the usual mode
        self.tmp = Path(tmp)
        self.handle = os.fdopen(fd, "wb")

    def write(self, data: Any) -> None:
        self.handle.write(data)

    def commit(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        try:
            self.handle.close()  # flushes what is buffered: fails again on a full disk
        except OSError:
            pass
        finally:
            self.tmp.unlink(missing_ok=True)


def write_atomic(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` through a unique temporary file and a rename."""
    pending = PendingFile(path)
    try:
        pending.write(payload)
        pending.commit()
    except BaseException:
        pending.discard()
        raise


@contextmanager
def folder_lock(directory: Path, name: str = LOCK_FILE) -> Iterator[None]:
    """Hold an exclusive `flock` on `directory/name` (created if missing) while the block runs.

    The lock is advisory: it orders Craft's own writers. The kernel releases it when the
    process dies, so a killed run never leaves the folder locked.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create the folder {directory} ({error.strerror})") from None
    fd = _open_lock_file(directory / name)
    if fd is None:  # a read-only folder: nothing here can be written, so nothing to order
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _open_lock_file(path: Path) -> int | None:
    for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
        try:
            return os.open(path, flags, 0o666)
        except OSError:
            continue
    return None


def _umask() -> int:
    """The process umask, read without changing it: setting it to 0 for a moment (the usual
    trick) would give world-writable files to another thread creating one meanwhile."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022  # the common default where /proc is missing
