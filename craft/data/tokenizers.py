"""Tokenizers: characters and SentencePiece, behind one small interface.

Both encode any text they were trained for and decode it back exactly: the char tokenizer by
construction, SentencePiece because Craft trains it with identity normalization, no whitespace
folding and byte fallback (its defaults collapse whitespace, so text would not round-trip).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import sentencepiece as spm

from craft.errors import DataError

Ids = np.ndarray  # one-dimensional, integer
# SentencePiece's max_sentence_length, left at its default (setting it changes the saved model's
# bytes): it skips longer sentences, so Craft cuts them first.
MAX_SENTENCE_BYTES = 4192
_MAX_SENTENCE_CHARS = MAX_SENTENCE_BYTES // 4  # a UTF-8 character takes at most 4 bytes


class Tokenizer(Protocol):
    """What the rest of Craft needs of a tokenizer."""

    kind: str
    suffix: str  # of the saved file, which says the kind to `load_tokenizer`

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> Ids: ...

    def decode(self, ids: Sequence[int] | Ids) -> str: ...

    def save(self, path: Path) -> Path: ...


def codepoints(text: str) -> np.ndarray:
    """The Unicode code points of `text`, as uint32."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


class CharTokenizer:
    """One id per Unicode character of the training text, in code point order."""

    kind = "char"
    suffix = ".json"

    def __init__(self, chars: Sequence[str]):
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise DataError("a char vocabulary must be distinct single characters")
        self.chars = list(chars)
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        # A dense code point -> id table makes encoding one vectorized gather.
        self._ids = np.full(int(self._codepoints.max(initial=0)) + 1, -1, dtype=np.int64)
        self._ids[self._codepoints] = np.arange(len(self.chars))

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        if not text:
            raise DataError("cannot build a char vocabulary from empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @classmethod
    def from_codepoints(cls, seen: np.ndarray) -> CharTokenizer:
        """The vocabulary of a text whose code points are marked True in `seen` (as `train`
        would build it, in code point order), for texts read in chunks."""
        return cls([chr(c) for c in np.flatnonzero(seen)])

    def encode(self, text: str) -> Ids:
        points = codepoints(text)
        ids = np.take(self._ids, points, mode="clip")
        unknown = (ids < 0) | (points >= len(self._ids))
        if unknown.any():
            missing = sorted({chr(c) for c in points[unknown]})
            shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in missing[:20])
            more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
            raise DataError(f"the char vocabulary lacks these characters: {shown}{more}")
        return ids

    def decode(self, ids: Sequence[int] | Ids) -> str:
        array = np.asarray(ids, dtype=np.int64)
        if array.size and (array.min() < 0 or array.max() >= self.vocab_size):
            raise DataError(f"token ids must lie in [0, {self.vocab_size}) for this vocabulary")
        return self._codepoints[array].tobytes().decode("utf-32-le")

    def save(self, path: Path) -> Path:
        payload = {"kind": self.kind, "chars": self.chars}
        Path(path).write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> CharTokenizer:
        try:
            payload = json.loads(Path(path).read_text(encoding="utf-8"))
            if payload.get("kind") != cls.kind:
                raise ValueError("not a char tokenizer")
            return cls(payload["chars"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DataError(f"cannot load a char tokenizer from {path}: {error}") from None


class SentencePieceTokenizer:
    """A SentencePiece BPE or unigram model trained so that every string round-trips."""

    kind = "sentencepiece"
    suffix = ".model"

    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self._newline = self._sp.piece_to_id("<0x0A>")

    @classmethod
    def train(
        cls,
        text: str,
        *,
        vocab_size: int,
        model_type: Literal["bpe", "unigram"] = "bpe",
        character_coverage: float = 1.0,
        num_threads: int = 2,
    ) -> SentencePieceTokenizer:
        """Train on the lines of `text`; a vocab too large for it says the largest that fits."""
        return cls.train_lines(
            text.split("\n"),
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            num_threads=num_threads,
        )

    @classmethod
    def train_lines(
        cls,
        lines: Iterable[str],
        *,
        vocab_size: int,
        model_type: Literal["bpe", "unigram"] = "bpe",
        character_coverage: float = 1.0,
        num_threads: int = 2,
    ) -> SentencePieceTokenizer:
        """Train on `lines` (read lazily; empty ones are skipped, long ones cut into sentences
        SentencePiece accepts)."""
        sentences = bounded_sentences(lines)
        first = next(sentences, None)
        if first is None:
            raise DataError("cannot train SentencePiece on empty text")
        model = _SentencePieceWriter()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=itertools.chain([first], sentences),
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=character_coverage,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                byte_fallback=True,
                split_digits=True,
                bos_id=-1,
                eos_id=-1,
                num_threads=num_threads,
                minloglevel=2,
            )
        except RuntimeError as error:
            raise DataError(_explain_training_error(str(error), vocab_size)) from None
        return cls(model.data)

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    def encode(self, text: str, num_threads: int = -1) -> Ids:
        # Lines are encoded independently (and in parallel); '\n' is its own byte token, so the
        # ids decode back to exactly `text`.
        lines = text.split("\n")
        encoded = self._sp.encode(lines, num_threads=num_threads)
        newline = [self._newline]
        chained = itertools.chain.from_iterable(
            itertools.chain(newline, ids) if i else ids for i, ids in enumerate(encoded)
        )
        return np.fromiter(chained, dtype=np.int64)

    def decode(self, ids: Sequence[int] | Ids) -> str:
        array = np.asarray(ids, dtype=np.int64)
        if array.size and (array.min() < 0 or array.max() >= self.vocab_size):
            raise DataError(f"token ids must lie in [0, {self.vocab_size}) for this vocabulary")
        return str(self._sp.decode(array.tolist()))

    def save(self, path: Path) -> Path:
        Path(path).write_bytes(self.model_proto)
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> SentencePieceTokenizer:
        try:
            return cls(Path(path).read_bytes())
        except (OSError, RuntimeError) as error:
            raise DataError(f"cannot load a SentencePiece model from {path}: {error}") from None


def bounded_sentences(lines: Iterable[str]) -> Iterator[str]:
    """The non-empty `lines`, each cut into pieces of at most MAX_SENTENCE_BYTES UTF-8 bytes.

    SentencePiece silently skips longer sentences, so a text without line breaks left it none
    (`[!sentences_.empty()]`). Cuts fall before a space where there is one: SentencePiece never
    lets a piece span a space, so such a cut loses no piece it could have learned.
    """
    for line in lines:
        if not line:
            continue
        if len(line) <= _MAX_SENTENCE_CHARS or len(line.encode()) <= MAX_SENTENCE_BYTES:
            yield line
            continue
        start = 0
        while start < len(line):
            end = min(start + _MAX_SENTENCE_CHARS, len(line))
            if end < len(line):
                space = line.rfind(" ", start + 1, end)
                end = space if space > start else end
            yield line[start:end]
            start = end


class _SentencePieceWriter:
    """Receives the trained model from SentencePiece instead of a file on disk."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def _explain_training_error(message: str, vocab_size: int) -> str:
    too_high = re.search(r"Vocabulary size too high \((\d+)\).*<= (\d+)", message)
    if too_high:
        return (
            f"vocab_size={vocab_size} is too large for this text: "
            f"the largest that fits is {too_high.group(2)}"
        )
    too_low = re.search(r"Vocabulary size is smaller than required_chars. (\d+) vs (\d+)", message)
    if too_low:
        return (
            f"vocab_size={vocab_size} is too small: it needs at least {too_low.group(2)} "
            "(every character of the text plus the 256 byte-fallback pieces)"
        )
    return f"SentencePiece could not train with vocab_size={vocab_size}: {message.strip()}"


TOKENIZERS: dict[str, type[CharTokenizer] | type[SentencePieceTokenizer]] = {
    CharTokenizer.kind: CharTokenizer,
    SentencePieceTokenizer.kind: SentencePieceTokenizer,
}


def load_tokenizer(path: Path) -> Tokenizer:
    """Load a saved tokenizer; its suffix says which kind (.json char, .model SentencePiece)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer file not found: {path}")
    for tokenizer_cls in TOKENIZERS.values():
        if path.suffix == tokenizer_cls.suffix:
            return tokenizer_cls.load(path)
    raise DataError(f"unknown tokenizer file {path}: expected a .json (char) or .model file")
