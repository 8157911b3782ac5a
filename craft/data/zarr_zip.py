"""Read Zarr v3 arrays from a zip store, and the blosc1 frames their chunks are compressed in.

Just enough of both formats to read a pinned dataset without the `zarr` and `blosc` packages:
a regular chunk grid, the default chunk key encoding, the codecs `transpose`, `bytes` and
`blosc` (zstd streams, with or without byte shuffle). Anything else is refused by name, so a
file that needs more fails loudly rather than decoding to wrong numbers.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
import zipfile
from collections import Counter
from typing import Any

import numpy as np

from craft.errors import DataError

# Blosc1 header flags (c-blosc's blosc.h).
_BYTE_SHUFFLE = 0x01
_MEMCPYED = 0x02
_BIT_SHUFFLE = 0x04
_RESERVED = 0x08
_DONT_SPLIT = 0x10
_COMPRESSORS = {0: "blosclz", 1: "lz4", 2: "snappy", 3: "zlib", 4: "zstd"}
_HEADER = struct.Struct(
    "<BBBBiii"
)  # version, versionlz, flags, typesize, nbytes, blocksize, cbytes

_DTYPES = {
    name: np.dtype(name)
    for name in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
} | {"float32": np.dtype("float32"), "float64": np.dtype("float64")}


def blosc_decompress(frame: bytes, *, expected_size: int | None = None) -> bytes:
    """Decode one blosc1 frame: memcpy'd or zstd blocks, split or not, byte-shuffled or not."""
    if len(frame) < _HEADER.size:
        raise DataError(f"blosc frame of {len(frame)} bytes is shorter than its 16-byte header")
    version, _, flags, typesize, nbytes, blocksize, cbytes = _HEADER.unpack_from(frame)
    if version != 2:
        raise DataError(f"blosc format version {version} is not supported (only blosc1 format 2)")
    if cbytes != len(frame):
        raise DataError(f"blosc frame says it holds {cbytes} bytes but has {len(frame)}")
    if expected_size is not None and nbytes != expected_size:
        raise DataError(f"blosc frame decodes to {nbytes} bytes, expected {expected_size}")
    if flags & _MEMCPYED:  # stored raw; the shuffle flags do not apply
        if cbytes != _HEADER.size + nbytes:
            raise DataError(f"memcpy'd blosc frame of {cbytes} bytes cannot hold {nbytes}")
        return frame[_HEADER.size :]
    if flags & (_BIT_SHUFFLE | _RESERVED):
        raise DataError(
            f"blosc flags {flags:#04x} ask for bit shuffle or a reserved bit: unsupported"
        )
    compressor = _COMPRESSORS.get(flags >> 5, f"code {flags >> 5}")
    if compressor != "zstd":
        raise DataError(f"blosc compressor {compressor} is not supported (only zstd)")
    if nbytes == 0:
        return b""
    if typesize < 1 or blocksize < 1:
        raise DataError(f"blosc header has typesize {typesize} and blocksize {blocksize}")
    zstd = zstd_decompressor()
    blocks = math.ceil(nbytes / blocksize)
    starts = struct.unpack_from(f"<{blocks}i", frame, _HEADER.size)
    out = bytearray()
    for index, start in enumerate(starts):
        size = min(blocksize, nbytes - index * blocksize)
        # A full block is split into one stream per byte of the type unless the flag says not.
        streams = 1 if flags & _DONT_SPLIT or size < blocksize else typesize
        block = b"".join(_streams(frame, start, size // streams, streams, zstd))
        if flags & _BYTE_SHUFFLE and typesize > 1:
            block = _unshuffle(block, typesize)
        out += block
    return bytes(out)


def _streams(frame: bytes, offset: int, size: int, count: int, zstd: Any) -> list[bytes]:
    """Read `count` length-prefixed streams of `size` decoded bytes each, from `offset` on."""
    decoded = []
    for _ in range(count):
        if offset + 4 > len(frame):
            raise DataError("blosc frame is truncated (a stream starts past its end)")
        (length,) = struct.unpack_from("<i", frame, offset)
        data = frame[offset + 4 : offset + 4 + length]
        if length <= 0 or len(data) != length:
            raise DataError(f"blosc stream at byte {offset} has a bad length {length}")
        # Blosc stores a stream raw when compressing it would not have made it smaller.
        stream = data if length == size else zstd.decompress(data, max_output_size=size)
        if len(stream) != size:
            raise DataError(
                f"blosc stream at byte {offset} decodes to {len(stream)} bytes, not {size}"
            )
        decoded.append(stream)
        offset += 4 + length
    return decoded


def _unshuffle(block: bytes, typesize: int) -> bytes:
    """Undo blosc's byte shuffle: byte j of every item was stored together, the tail unshuffled."""
    items = len(block) // typesize
    planes = np.frombuffer(block, np.uint8, count=items * typesize).reshape(typesize, items)
    return planes.T.tobytes() + block[items * typesize :]


def zstd_decompressor() -> Any:
    """A zstandard decompressor, or a DataError saying how to install the optional package."""
    try:
        import zstandard
    except ImportError:
        raise DataError(
            "reading MNIST needs the zstandard package: pip install 'craft[mnist]'"
        ) from None
    return zstandard.ZstdDecompressor()


def read_zarr_array(store: zipfile.ZipFile, name: str) -> np.ndarray:
    """The whole Zarr v3 array `name` (a folder in the zip holding `zarr.json` and `c/...`)."""
    counts = Counter(info.filename for info in store.infolist())
    doubled = sorted(n for n, c in counts.items() if c > 1 and n.startswith(f"{name}/"))
    if doubled:  # zipfile would silently read the last copy
        raise DataError(f"zarr store has more than one copy of {doubled[0]}")
    try:
        meta = json.loads(store.read(f"{name}/zarr.json"))
    except KeyError:
        raise DataError(f"zarr store has no array {name!r} ({name}/zarr.json missing)") from None
    try:
        shape, chunk, dtype, order, blosc = _array_layout(meta, name)
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{name}/zarr.json is malformed ({error!r})") from None
    out = np.full(shape, meta.get("fill_value", 0), dtype=dtype.newbyteorder("="))
    separator = meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/")
    grid = [range(math.ceil(s / c)) for s, c in zip(shape, chunk, strict=True)]
    for coords in itertools.product(*grid):
        key = separator.join([f"{name}/c", *map(str, coords)])
        if key not in counts:
            continue  # a chunk never written holds the fill value
        data = store.read(key)
        if blosc:
            data = blosc_decompress(data, expected_size=math.prod(chunk) * dtype.itemsize)
        stored = np.frombuffer(data, dtype=dtype)
        if stored.size != math.prod(chunk):
            raise DataError(f"zarr chunk {key} holds {stored.size} items, not {math.prod(chunk)}")
        block = stored.reshape([chunk[axis] for axis in order]).transpose(np.argsort(order))
        region = tuple(
            slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(coords, chunk, shape, strict=True)
        )
        out[region] = block[tuple(slice(0, r.stop - r.start) for r in region)]
    return out


_Layout = tuple[list[int], list[int], np.dtype, list[int], bool]


def _array_layout(meta: dict, name: str) -> _Layout:
    """Check the metadata against what this reader supports; return what decoding needs."""
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
        raise DataError(f"{name}/zarr.json is not Zarr v3 array metadata")
    if meta.get("storage_transformers"):
        raise DataError(f"{name}: zarr storage transformers are not supported")
    dtype = _DTYPES.get(meta.get("data_type", ""))
    if dtype is None:
        raise DataError(f"{name}: zarr data type {meta.get('data_type')!r} is not supported")
    grid, keys = meta.get("chunk_grid", {}), meta.get("chunk_key_encoding", {})
    if grid.get("name") != "regular" or keys.get("name") != "default":
        raise DataError(f"{name}: only a regular chunk grid with default chunk keys is supported")
    shape, chunk = list(meta["shape"]), list(grid["configuration"]["chunk_shape"])
    if len(shape) != len(chunk) or not shape:
        raise DataError(f"{name}: chunk shape {chunk} does not fit array shape {shape}")
    axes = list(range(len(shape)))
    order, endian, stage = axes, "little", "array"
    # Zarr v3 codec order: array->array codecs, then one array->bytes, then bytes->bytes.
    for codec in meta.get("codecs", []):
        codec_name, config = codec.get("name"), codec.get("configuration", {})
        if codec_name == "transpose" and stage == "array" and sorted(config["order"]) == axes:
            order = [order[axis] for axis in config["order"]]
        elif codec_name == "bytes" and stage == "array":
            endian, stage = config.get("endian", "little"), "bytes"
        elif codec_name == "blosc" and stage == "bytes":
            stage = "blosc"  # one compressor; a second one would be unexpected
        else:
            raise DataError(
                f"{name}: zarr codec {codec_name!r} is not supported at this place in the chain "
                f"{[c.get('name') for c in meta.get('codecs', [])]}"
            )
    if stage == "array":
        raise DataError(f"{name}: zarr codecs lack the array->bytes codec 'bytes'")
    if endian not in ("little", "big"):
        raise DataError(f"{name}: zarr bytes codec endian {endian!r} is not supported")
    stored = dtype.newbyteorder("<") if endian == "little" else dtype.newbyteorder(">")
    return shape, chunk, stored, order, stage == "blosc"
