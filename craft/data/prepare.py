"""Text -> token ids on disk: `train.bin`, `val.bin`, `test.bin` and `meta.json`.

The bins are raw little-endian uint16 (vocabularies up to 65,536 symbols) or uint32 arrays, ready
for `numpy.memmap`. The splits are contiguous slices of the text in file order. The tokenizer file
lives beside them, so a checkpoint can name it. Preparing the same inputs again is a cache hit.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from craft.data.config import DataConfig, TokenizerConfig
from craft.data.text import read_text, sha256_file
from craft.data.tokenizers import (
    CharTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    load_tokenizer,
)
from craft.errors import DataError

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PreparedData:
    """A prepared dataset folder and its metadata."""

    directory: Path
    meta: dict[str, Any]
    cached: bool

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / self.meta["tokenizer"]["file"]

    def split(self, name: str) -> np.ndarray:
        """A read-only memory map of one split's token ids."""
        return open_split(self.directory, name)


def split_text(text: str, ratios: tuple[float, float, float]) -> list[str]:
    """Cut `text` into contiguous train, val and test slices by character count."""
    first = round(len(text) * ratios[0])
    second = first + round(len(text) * ratios[1])
    return [text[:first], text[first:second], text[second:]]


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocab up to 65,536), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def prepare(
    input_path: Path,
    output_dir: Path,
    data: DataConfig,
    tokenizer: TokenizerConfig | None = None,
) -> PreparedData:
    """Tokenize `input_path` into `output_dir`; a cache hit when nothing changed."""
    tokenizer = tokenizer or TokenizerConfig()
    output_dir = Path(output_dir)
    text, input_sha = read_text(Path(input_path), data.errors)
    fingerprint = _fingerprint(input_sha, data, tokenizer)
    cached = _load_if_current(output_dir, fingerprint)
    if cached is not None:
        if data.window:
            check_windows_fit(cached["tokens"], data.window, data.split_ratios, input_path)
        return PreparedData(output_dir, cached, cached=True)

    parts = split_text(text, data.split_ratios)
    tok = _make_tokenizer(text, parts[0], data, tokenizer)
    dtype = token_dtype(tok.vocab_size)
    encoded = {name: tok.encode(part) for name, part in zip(SPLITS, parts, strict=True)}
    if data.window:
        counts = {name: len(ids) for name, ids in encoded.items()}
        check_windows_fit(counts, data.window, data.split_ratios, input_path)

    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_file = f"tokenizer{type(tok).suffix}"
    tok.save(output_dir / tokenizer_file)
    for name, ids in encoded.items():
        _write_atomic(output_dir / f"{name}.bin", ids.astype(dtype).tobytes())
    meta = {
        "format": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "input": {"path": str(input_path), "sha256": input_sha, "chars": len(text)},
        "tokenizer": {
            "kind": tok.kind,
            "file": tokenizer_file,
            "settings": tokenizer.model_dump() if data.tokenizer == "subword" else {},
            "given": data.tokenizer_file,
        },
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "tokens": {name: len(ids) for name, ids in encoded.items()},
        "split_ratios": list(data.split_ratios),
        "errors": data.errors,
    }
    # meta.json is written last: while it is missing or stale the folder is not a cache hit.
    _write_atomic(output_dir / "meta.json", json.dumps(meta, indent=2).encode())
    return PreparedData(output_dir, meta, cached=False)


def check_windows_fit(tokens: dict[str, int], window: int, ratios: Any, source: Any) -> None:
    """Every split with a non-zero ratio must hold one window plus its last target token."""
    for (name, count), ratio in zip(tokens.items(), ratios, strict=True):
        if ratio > 0 and count < window + 1:
            raise DataError(
                f"the {name} split of {source} has {count} tokens, fewer than one window "
                f"(window={window}, plus one target token); use more text, a larger "
                f"{name} ratio or a smaller DataConfig.window"
            )


def open_split(directory: Path, name: str) -> np.ndarray:
    """A read-only memory map of `directory/<name>.bin`, typed by its meta.json."""
    if name not in SPLITS:
        raise DataError(f"unknown split '{name}': expected one of {', '.join(SPLITS)}")
    meta = read_meta(directory)
    return np.memmap(Path(directory) / f"{name}.bin", dtype=meta["dtype"], mode="r")


def read_meta(directory: Path) -> dict[str, Any]:
    path = Path(directory) / "meta.json"
    if not path.is_file():
        raise DataError(f"{directory} is not a prepared dataset (no meta.json)")
    meta: dict[str, Any] = json.loads(path.read_text())
    return meta


def _make_tokenizer(
    text: str, train_text: str, data: DataConfig, settings: TokenizerConfig
) -> Tokenizer:
    if data.tokenizer_file:
        tok = load_tokenizer(Path(data.tokenizer_file))
        expected = "char" if data.tokenizer == "char" else "sentencepiece"
        if tok.kind != expected:
            raise DataError(
                f"{data.tokenizer_file} is a {tok.kind} tokenizer, but tokenizer={data.tokenizer}"
            )
        return tok
    if data.tokenizer == "char":
        # The vocabulary covers the whole text so that val and test encode too.
        return CharTokenizer.train(text)
    return SentencePieceTokenizer.train(
        train_text,
        vocab_size=settings.vocab_size,
        model_type=settings.model_type,
        character_coverage=settings.character_coverage,
    )


def _fingerprint(input_sha: str, data: DataConfig, tokenizer: TokenizerConfig) -> str:
    recipe = {
        "format": FORMAT_VERSION,
        "input_sha256": input_sha,
        "tokenizer": data.tokenizer,
        "tokenizer_file_sha256": sha256_file(Path(data.tokenizer_file))
        if data.tokenizer_file and Path(data.tokenizer_file).is_file()
        else None,
        "settings": tokenizer.model_dump() if data.tokenizer == "subword" else None,
        "split_ratios": list(data.split_ratios),
        "errors": data.errors,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def _load_if_current(directory: Path, fingerprint: str) -> dict[str, Any] | None:
    """The folder's meta when it was prepared from the same recipe and its files are whole."""
    try:
        meta = read_meta(directory)
    except (DataError, ValueError):
        return None
    if meta.get("fingerprint") != fingerprint:
        return None
    itemsize = np.dtype(meta["dtype"]).itemsize
    for name in SPLITS:
        path = directory / f"{name}.bin"
        if not path.is_file() or path.stat().st_size != meta["tokens"][name] * itemsize:
            return None
    if not (directory / meta["tokenizer"]["file"]).is_file():
        return None
    return meta


def _write_atomic(path: Path, payload: bytes) -> None:
    """Write to a temporary file, fsync, then rename over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def default_prepared_dir(data: DataConfig, tokenizer: TokenizerConfig) -> Path:
    """data_dir/prepared/<source name>-char, or -<model type><vocab size> for subword."""
    if data.prepared_dir:
        return Path(data.prepared_dir)
    name = "got" if data.source == "got" else Path(data.source).stem
    if data.tokenizer == "char":
        suffix = "char"
    elif data.tokenizer_file:
        suffix = "subword-" + Path(data.tokenizer_file).stem
    else:
        suffix = f"{tokenizer.model_type}{tokenizer.vocab_size}"
    return Path(data.data_dir) / "prepared" / f"{name}-{suffix}"
