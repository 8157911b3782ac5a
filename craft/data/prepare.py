"""Text -> token ids on disk: `train.bin`, `val.bin`, `test.bin` and `meta.json`.

The bins are raw little-endian uint16 (vocabularies up to 65,536 symbols) or uint32 arrays, ready
for `numpy.memmap`. The splits are contiguous slices of the text in file order, by character
count. The tokenizer file lives beside them, so a checkpoint can name it. Preparing the same
inputs again is a cache hit.

Memory stays bounded whatever the text's size: the text is read in chunks, once to count its
characters (and collect the char vocabulary), once for SentencePiece's training lines (a bounded
sample), and once to encode it chunk by chunk, appending to the split files.

A folder is trusted only while it matches what `prepare` wrote: meta.json records each split's
token count and sha256, checked whenever a split is opened (`verify_split`) and on every cache
hit; a mismatch prepares the folder again here, and is a DataError naming the file elsewhere.
One `prepare` at a time writes a folder (it holds the folder's lock), under unique temporary
names, and meta.json goes last: while it is missing the folder is not a cache hit.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from craft.data.config import DataConfig, TokenizerConfig
from craft.data.text import (
    Errors,
    PendingFile,
    check_input,
    folder_lock,
    iter_text,
    sha256_file,
    write_atomic,
)
from craft.data.tokenizers import (
    CharTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    codepoints,
    load_tokenizer,
)
from craft.errors import DataError
from craft.files import is_out_of_space, out_of_space

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 2  # 2: meta.json records each split's sha256
SENTENCEPIECE_SAMPLE_CHARS = 10_000_000
"""SentencePiece trains on every line of a train split up to this size, and on an evenly spaced
subset of lines (about this many characters) of a larger one: its memory grows with its input."""
_UNICODE_SIZE = 0x110000
MAX_UNIT_CHARS = 1 << 22
"""`prepare` encodes its text in units that end where no token can span the cut; a stretch this
long without such a place is cut anyway, so memory stays bounded."""


@dataclass(frozen=True)
class PreparedData:
    """A prepared dataset folder and its metadata (checked against its files by `prepare`)."""

    directory: Path
    meta: dict[str, Any]
    cached: bool

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / self.meta["tokenizer"]["file"]

    def split(self, name: str) -> np.ndarray:
        """A read-only memory map of one split's token ids (verified when `prepare` ran)."""
        return open_split(self.directory, name, verify=False)


def split_bounds(chars: int, ratios: tuple[float, float, float]) -> tuple[int, int]:
    """Where val and test start, in characters of a `chars`-long text."""
    first = round(chars * ratios[0])
    return first, first + round(chars * ratios[1])


def split_text(text: str, ratios: tuple[float, float, float]) -> list[str]:
    """Cut `text` into contiguous train, val and test slices by character count."""
    first, second = split_bounds(len(text), ratios)
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
    input_path, output_dir = Path(input_path), Path(output_dir)
    check_input(input_path)
    input_sha = sha256_file(input_path)
    fingerprint = _fingerprint(input_sha, data, tokenizer)
    # Concurrent runs on one folder take turns: the first prepares, the others find it cached.
    with folder_lock(output_dir):
        meta = _load_if_current(output_dir, fingerprint)
        if meta is not None:
            if data.window:
                check_windows_fit(meta["tokens"], data.window, data.split_ratios, input_path)
            return PreparedData(output_dir, meta, cached=True)
        meta = _prepare_now(input_path, output_dir, input_sha, fingerprint, data, tokenizer)
    return PreparedData(output_dir, meta, cached=False)


@dataclass(frozen=True)
class _TextStats:
    chars: int
    seen: np.ndarray  # bool per code point: which characters occur


def _prepare_now(
    input_path: Path,
    output_dir: Path,
    input_sha: str,
    fingerprint: str,
    data: DataConfig,
    settings: TokenizerConfig,
) -> dict[str, Any]:
    stats = _scan(input_path, data, input_sha)
    bounds = split_bounds(stats.chars, data.split_ratios)
    chars = _split_chars(stats.chars, bounds)
    check_splits_not_empty(chars, data.split_ratios, input_path)
    tok = _make_tokenizer(input_path, stats, chars["train"], data, settings)
    dtype = token_dtype(tok.vocab_size)
    writers = {name: _SplitWriter(output_dir / f"{name}.bin", dtype) for name in SPLITS}
    tokenizer_file = f"tokenizer{type(tok).suffix}"
    tokenizer_out = PendingFile(output_dir / tokenizer_file)
    try:
        digest = hashlib.sha256()
        pieces = split_pieces(iter_text(input_path, data.errors, digest=digest), bounds)
        for index, piece in encoding_units(pieces):
            writers[SPLITS[index]].append(tok.encode(piece))
        _check_unchanged(input_path, digest, input_sha)
        tokens = {name: writer.count for name, writer in writers.items()}
        if data.window:
            check_windows_fit(tokens, data.window, data.split_ratios, input_path)
        meta = {
            "format": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "input": {"path": str(input_path), "sha256": input_sha, "chars": stats.chars},
            "tokenizer": {
                "kind": tok.kind,
                "file": tokenizer_file,
                "settings": settings.model_dump() if data.tokenizer == "subword" else {},
                "given": data.tokenizer_file,
            },
            "vocab_size": tok.vocab_size,
            "dtype": dtype.name,
            "tokens": tokens,
            "sha256": {name: writer.digest.hexdigest() for name, writer in writers.items()},
            "split_ratios": list(data.split_ratios),
            "errors": data.errors,
        }
        # Without meta.json the folder is no cache hit, and no reader pairs the old meta with
        # new files; it comes back last, once every file it describes is in place.
        (output_dir / "meta.json").unlink(missing_ok=True)
        tok.save(tokenizer_out.tmp)  # the tokenizer writes the file by name
        tokenizer_out.commit()
        for writer in writers.values():
            writer.file.commit()
        write_atomic(output_dir / "meta.json", json.dumps(meta, indent=2).encode())
    except BaseException as error:
        tokenizer_out.discard()
        for writer in writers.values():
            writer.file.discard()
        if is_out_of_space(error):
            raise out_of_space(
                output_dir, None, error, "No partial file is left; free some space and run again"
            ) from None
        raise
    return meta


def _scan(input_path: Path, data: DataConfig, input_sha: str) -> _TextStats:
    """Count the characters and mark which occur, reading the text in chunks."""
    seen = np.zeros(_UNICODE_SIZE, dtype=bool)
    chars = 0
    digest = hashlib.sha256()
    for chunk in iter_text(input_path, data.errors, digest=digest):
        seen[codepoints(chunk)] = True
        chars += len(chunk)
    _check_unchanged(input_path, digest, input_sha)
    return _TextStats(chars, seen)


def _check_unchanged(path: Path, digest: Any, expected: str) -> None:
    if digest.hexdigest() != expected:
        raise DataError(f"{path} changed while it was being prepared; prepare again once it is")


def _split_chars(chars: int, bounds: tuple[int, int]) -> dict[str, int]:
    first, second = min(bounds[0], chars), min(bounds[1], chars)
    return {"train": first, "val": second - first, "test": chars - second}


def split_pieces(chunks: Iterable[str], bounds: tuple[int, int]) -> Iterator[tuple[int, str]]:
    """(split index, text) in file order: `chunks` cut where val and test start."""
    position = 0
    for chunk in chunks:
        start = 0
        while start < len(chunk):
            index = 0 if position < bounds[0] else 1 if position < bounds[1] else 2
            end = bounds[index] if index < 2 else position + len(chunk)
            take = min(len(chunk) - start, end - position)
            yield index, chunk[start : start + take]
            start += take
            position += take


def encoding_units(pieces: Iterable[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """The pieces regrouped for encoding one by one: each unit ends a split, or ends just before
    a line break (else a space) that follows a non-space character.

    Both subword tokenizers then give, unit by unit, exactly the ids of the whole split:
    SentencePiece encodes line by line and its pieces never span a space; GPT-2's byte-level
    pre-tokenizer never joins a non-space character to the whitespace after it (but it joins a
    line break to the indentation or blank lines after it: cutting after one is not safe). Only
    a stretch of MAX_UNIT_CHARS without such a point is cut anywhere.
    """
    index, carry = 0, ""
    for piece_index, text in pieces:
        if piece_index != index:
            if carry:
                yield index, carry
            index, carry = piece_index, ""
        text = carry + text
        cut = _unit_end(text)
        if cut is None and len(text) >= MAX_UNIT_CHARS:
            cut = len(text)
        if cut:
            yield index, text[:cut]
        carry = text[cut:] if cut else text
    if carry:
        yield index, carry


def _unit_end(text: str) -> int | None:
    """Where the last line break, else the last space, after a non-space character is, if
    anywhere. Line breaks first: SentencePiece's training lines stay whole."""
    for mark in ("\n", " "):
        end = len(text)
        while (at := text.rfind(mark, 1, end)) > 0:
            if not text[at - 1].isspace():
                return at
            end = at
    return None


class _SplitWriter:
    """Token ids appended to a split file under a temporary name, counted and hashed."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.file = PendingFile(path)
        self.dtype = dtype
        self.digest = hashlib.sha256()
        self.count = 0

    def append(self, ids: np.ndarray) -> None:
        data = np.asarray(ids, dtype=self.dtype).tobytes()
        self.file.write(data)
        self.digest.update(data)
        self.count += len(ids)


def check_splits_not_empty(chars: dict[str, int], ratios: Any, source: Any) -> None:
    """Training reads train and val, so they must hold text; so must any split given a share."""
    for (name, count), ratio in zip(chars.items(), ratios, strict=True):
        if count or (ratio == 0 and name == "test"):
            continue
        if ratio == 0:
            raise DataError(
                f"split_ratios={list(ratios)} leave the {name} split of {source} empty, but "
                f"training needs text in train and val; give {name} a share "
                "(e.g. --split_ratios=0.9,0.05,0.05 or DataConfig.split_ratios)"
            )
        raise DataError(
            f"the {name} split of {source} comes out empty ({sum(chars.values())} characters "
            f"split {list(ratios)}); use a longer text or a larger {name} ratio"
        )


def check_windows_fit(tokens: dict[str, int], window: int, ratios: Any, source: Any) -> None:
    """Every split with a non-zero ratio must hold one window plus its last target token."""
    for (name, count), ratio in zip(tokens.items(), ratios, strict=True):
        if ratio > 0 and count < window + 1:
            raise DataError(
                f"the {name} split of {source} has {count} tokens, fewer than one window "
                f"(window={window}, plus one target token); use more text, a larger "
                f"{name} ratio or a smaller DataConfig.window"
            )


def open_split(directory: Path, name: str, *, verify: bool = True) -> np.ndarray:
    """A read-only memory map of `directory/<name>.bin`, typed by its meta.json and, unless
    `verify` is False, checked against it (`verify_split`)."""
    if name not in SPLITS:
        raise DataError(f"unknown split '{name}': expected one of {', '.join(SPLITS)}")
    directory = Path(directory)
    meta = read_meta(directory)
    if not meta["tokens"][name]:
        raise DataError(
            f"the {name} split of {directory} is empty (prepared with split_ratios="
            f"{meta['split_ratios']}); prepare the text again with a non-zero {name} ratio"
        )
    if verify:
        verify_split(directory, name, meta)
    return np.memmap(directory / f"{name}.bin", dtype=meta["dtype"], mode="r")


def verify_split(directory: Path, name: str, meta: dict[str, Any]) -> None:
    """A DataError naming the file unless `<name>.bin` is what meta.json says prepare wrote."""
    problem = _split_problem(Path(directory), name, meta)
    if problem:
        raise DataError(f"{problem}; {_redo(directory)}")


def _split_problem(directory: Path, name: str, meta: dict[str, Any]) -> str | None:
    """What is wrong with one split file (size, sha256, ids outside the vocabulary), if anything.

    One pass over the file: it is hashed in chunks, so this costs a read, not a copy.
    """
    path = directory / f"{name}.bin"
    dtype, count = np.dtype(meta["dtype"]), int(meta["tokens"][name])
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    if size != count * dtype.itemsize:
        return (
            f"{path} holds {size:,} bytes, but meta.json records {count:,} {dtype.name} tokens "
            f"({count * dtype.itemsize:,} bytes): it changed after it was prepared"
        )
    digest, top = hashlib.sha256(), -1
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
            top = max(top, int(np.frombuffer(chunk, dtype=dtype).max()))
    if digest.hexdigest() != meta["sha256"][name]:
        return (
            f"{path} does not match the sha256 that prepare recorded in meta.json: it changed "
            "or was damaged after it was prepared"
        )
    if top >= int(meta["vocab_size"]):
        return (
            f"{path} holds token id {top}, outside the {meta['vocab_size']}-symbol vocabulary "
            "that meta.json records"
        )
    return None


def read_meta(directory: Path) -> dict[str, Any]:
    """A prepared folder's meta.json, checked for the fields and format this Craft reads."""
    path = Path(directory) / "meta.json"
    if not path.is_file():
        raise DataError(f"{directory} is not a prepared dataset (no meta.json)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {path} ({error}); {_redo(directory)}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path} is not a JSON object; {_redo(directory)}")
    found = meta.get("format")
    if found != FORMAT_VERSION:
        older = isinstance(found, int) and found < FORMAT_VERSION
        raise DataError(
            f"{path} has format {found}, and this Craft reads format {FORMAT_VERSION}"
            + (" (older folders lack the split checksums)" if older else "")
            + f"; {_redo(directory)}"
        )
    missing = [k for k in ("dtype", "vocab_size", "tokens", "sha256", "tokenizer") if k not in meta]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}; {_redo(directory)}")
    return meta


def _redo(directory: Path) -> str:
    return (
        f"run `python -m craft.main prepare` again (it replaces the folder) or delete {directory} "
        "and prepare the data anew"
    )


def _make_tokenizer(
    input_path: Path,
    stats: _TextStats,
    train_chars: int,
    data: DataConfig,
    settings: TokenizerConfig,
) -> Tokenizer:
    if data.tokenizer_file:
        tok = load_tokenizer(Path(data.tokenizer_file))
        # Subword: a SentencePiece model or a Hugging Face tokenizer.json, used as they are.
        expected = ("char",) if data.tokenizer == "char" else ("sentencepiece", "hf")
        if tok.kind not in expected:
            other = "subword" if data.tokenizer == "char" else "char"
            raise DataError(
                f"{data.tokenizer_file} is a {tok.kind} tokenizer, but tokenizer={data.tokenizer}; "
                f"pass --type={other} (DataConfig.tokenizer) to use it"
            )
        if isinstance(tok, CharTokenizer):
            # Every character of the text, once: the error names all that the vocabulary lacks.
            tok.encode("".join(map(chr, np.flatnonzero(stats.seen))))
        return tok
    if data.tokenizer == "char":
        # The vocabulary covers the whole text so that val and test encode too.
        return CharTokenizer.from_codepoints(stats.seen)
    # The sample is read whole before training starts: streaming it into SentencePiece while
    # it trains interleaves the text's chunks with the trainer's allocations, and the heap
    # then grew with the input (371 MB for 400 MB of text, against 244 MB for 200 MB).
    sample = list(training_lines(input_path, data.errors, train_chars))
    return SentencePieceTokenizer.train_lines(
        sample,
        vocab_size=settings.vocab_size,
        model_type=settings.model_type,
        character_coverage=settings.character_coverage,
    )


def training_lines(
    input_path: Path, errors: Errors, train_chars: int | None = None
) -> Iterator[str]:
    """The non-empty lines of the first `train_chars` characters (None: the whole file, counted
    in a first pass): all of them, or every k-th of a text larger than SENTENCEPIECE_SAMPLE_CHARS
    (a deterministic sample spread over the whole text), read in chunks."""
    if train_chars is None:
        train_chars = sum(len(chunk) for chunk in iter_text(input_path, errors))
    stride = max(1, math.ceil(train_chars / SENTENCEPIECE_SAMPLE_CHARS))
    pieces = split_pieces(iter_text(input_path, errors), (train_chars, train_chars))
    train = itertools.takewhile(lambda unit: unit[0] == 0, encoding_units(pieces))
    lines = (line for _, text in train for line in text.split("\n") if line)
    return itertools.islice(lines, 0, None, stride)


def _fingerprint(input_sha: str, data: DataConfig, tokenizer: TokenizerConfig) -> str:
    subword = data.tokenizer == "subword"
    recipe = {
        "format": FORMAT_VERSION,
        "input_sha256": input_sha,
        "tokenizer": data.tokenizer,
        "tokenizer_file_sha256": sha256_file(Path(data.tokenizer_file))
        if data.tokenizer_file and Path(data.tokenizer_file).is_file()
        else None,
        "settings": tokenizer.model_dump() if subword else None,
        "sentencepiece_sample_chars": SENTENCEPIECE_SAMPLE_CHARS if subword else None,
        "split_ratios": list(data.split_ratios),
        "errors": data.errors,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def _load_if_current(directory: Path, fingerprint: str) -> dict[str, Any] | None:
    """The folder's meta when it was prepared from the same recipe and its files match it."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("fingerprint") != fingerprint:
        return None  # another recipe (or an older format): prepare anew, nothing to report
    try:
        meta = read_meta(directory)
        tokenizer_path = directory / meta["tokenizer"]["file"]
        problems = [_split_problem(directory, name, meta) for name in SPLITS]
        if not tokenizer_path.is_file():
            problems.append(f"{tokenizer_path} is missing")
    except (DataError, KeyError, TypeError, ValueError) as error:
        problems = [str(error)]
    found = [problem for problem in problems if problem]
    if found:
        print(f"craft: {found[0]}; preparing {directory} again", file=sys.stderr)
        return None
    return meta


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
