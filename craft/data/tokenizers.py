"""Tokenizers: characters, SentencePiece and Hugging Face's, behind one small interface.

The char and SentencePiece tokenizers encode any text they were trained for and decode it back
exactly: the char tokenizer by construction, SentencePiece because Craft trains it with identity
normalization, no whitespace folding and byte fallback (its defaults collapse whitespace, so text
would not round-trip). A Hugging Face tokenizer (a `tokenizers` tokenizer.json, or GPT-2's
vocab.json + merges.txt) is used as it is: its ids and text are exactly transformers'.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import sentencepiece as spm

from craft.errors import DataError

Ids = np.ndarray  # one-dimensional, integer
T = TypeVar("T")
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
            if not isinstance(payload, dict) or payload.get("kind") != cls.kind:
                raise ValueError("not a char tokenizer")
            return cls(payload["chars"])
        except (DataError, OSError, ValueError, KeyError, TypeError, RecursionError) as error:
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


HF_EXTRA = "install the hf extra: pip install -e '.[hf]'"
END_OF_TEXT = "<|endoftext|>"  # GPT-2's one special token: end of a document, and unknown


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer, encoding and decoding exactly as transformers'
    `PreTrainedTokenizerFast(tokenizer_file=...)` does with `add_special_tokens=False`.

    Encoding adds no special tokens: a post-processor's BOS/EOS would land at every piece that
    `prepare` encodes, not once per document; special tokens written in the text (such as
    `<|endoftext|>`) still encode to their ids. Decoding keeps special tokens and does not clean
    up spaces (transformers' default, and it skips that cleanup for BPE tokenizers anyway).
    """

    kind = "hf"
    suffix = ".json"

    def __init__(self, tokenizer: Any):
        # transformers turns truncation and padding off unless a call asks for them; a
        # tokenizer.json may carry either, and each would change the ids.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        ids = tokenizer.get_vocab(with_added_tokens=True).values()
        if not ids:
            raise DataError("its vocabulary is empty")
        # The id space, added tokens included: the size of the vocabulary when its ids have no
        # gaps, and never less than one past the largest id, which the model must embed.
        self._vocab_size = int(max(ids)) + 1
        self.eos_id: int | None = tokenizer.token_to_id(END_OF_TEXT)
        """The id of `<|endoftext|>`, or None if the vocabulary lacks it."""

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode(self, text: str) -> Ids:
        encoding = _guarded(
            lambda: self._tokenizer.encode(text, add_special_tokens=False),
            "the Hugging Face tokenizer could not encode the text",
        )
        return np.array(encoding.ids, dtype=np.int64)

    def decode(self, ids: Sequence[int] | Ids) -> str:
        array = np.asarray(ids, dtype=np.int64)
        if array.size and (array.min() < 0 or array.max() >= self.vocab_size):
            raise DataError(f"token ids must lie in [0, {self.vocab_size}) for this vocabulary")
        tokens = array.tolist()
        return str(
            _guarded(
                lambda: self._tokenizer.decode(tokens, skip_special_tokens=False),
                "the Hugging Face tokenizer could not decode the ids",
            )
        )

    def save(self, path: Path) -> Path:
        """Write a tokenizer.json that `tokenizers` and transformers load as it is."""
        Path(path).write_text(self._tokenizer.to_str(pretty=True), encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> HFTokenizer:
        """A tokenizer.json, as written by `tokenizers` or transformers' `save_pretrained`."""
        lib = _tokenizers_lib()
        path = Path(path)
        text, payload = _read_json(path)
        what = f"cannot load a Hugging Face tokenizer from {path}"
        if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
            raise DataError(f'{what}: it is not a tokenizer.json (no "model" object)')
        return _guarded(lambda: cls(lib.Tokenizer.from_str(text)), what)

    @classmethod
    def from_vocab_merges(cls, vocab_path: Path, merges_path: Path) -> HFTokenizer:
        """GPT-2's byte-level BPE from its legacy vocab.json and merges.txt, built as
        transformers' GPT2Tokenizer builds it: GPT-2's pre-tokenizer and decoder, and
        `<|endoftext|>` a special token (appended to the vocabulary if it lacks it)."""
        lib = _tokenizers_lib()
        for path in (vocab_path, merges_path):
            if not Path(path).is_file():
                raise DataError(f"GPT-2 tokenizer file not found: {path}")

        def build() -> HFTokenizer:
            vocab, merges = lib.models.BPE.read_file(str(vocab_path), str(merges_path))
            model = lib.models.BPE(
                vocab,
                merges,
                dropout=None,
                continuing_subword_prefix="",
                end_of_word_suffix="",
                fuse_unk=False,
            )
            tokenizer = lib.Tokenizer(model)
            tokenizer.pre_tokenizer = lib.pre_tokenizers.ByteLevel(add_prefix_space=False)
            tokenizer.decoder = lib.decoders.ByteLevel()
            tokenizer.add_special_tokens(
                [lib.AddedToken(END_OF_TEXT, special=True, normalized=False)]
            )
            return cls(tokenizer)

        return _guarded(
            build,
            f"cannot build a GPT-2 tokenizer from {vocab_path} and {merges_path} (expected a JSON "
            "object {token: id} and a merges.txt of 'left right' lines)",
        )


def _tokenizers_lib() -> Any:
    """The `tokenizers` package, imported only when a Hugging Face tokenizer is used."""
    try:
        import tokenizers
    except ImportError:
        raise DataError(
            f"Hugging Face tokenizers need the `tokenizers` package; {HF_EXTRA}"
        ) from None
    return tokenizers


def _guarded(call: Callable[[], T], what: str) -> T:
    """`call()`, any error in it a DataError saying `what: why`. The Rust code of `tokenizers`
    reports bad input as a bare Exception, or on some malformed files as a panic, which is a
    BaseException."""
    try:
        return call()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # a Rust panic is not an Exception
        raise DataError(f"{what}: {str(error).strip() or type(error).__name__}") from None


def _read_json(path: Path) -> tuple[str, Any]:
    """The text of a JSON file and its parsed content, or a DataError naming it."""
    try:
        text = path.read_text(encoding="utf-8")
        return text, json.loads(text)
    except (OSError, ValueError, RecursionError) as error:
        raise DataError(f"cannot read {path} as JSON: {error}") from None


def _json_tokenizer(path: Path) -> type[CharTokenizer] | type[HFTokenizer]:
    """Which kind a .json tokenizer file holds, from its content."""
    _, payload = _read_json(path)
    if isinstance(payload, dict) and payload.get("kind") == CharTokenizer.kind:
        return CharTokenizer
    if isinstance(payload, dict) and "model" in payload:
        return HFTokenizer
    raise DataError(
        f"{path} is not a tokenizer Craft knows: expected a Craft char tokenizer "
        '({"kind": "char", ...}) or a Hugging Face tokenizer.json (with a "model")'
    )


TOKENIZERS: dict[str, type[CharTokenizer] | type[SentencePieceTokenizer] | type[HFTokenizer]] = {
    CharTokenizer.kind: CharTokenizer,
    SentencePieceTokenizer.kind: SentencePieceTokenizer,
    HFTokenizer.kind: HFTokenizer,
}


def load_tokenizer(path: Path) -> Tokenizer:
    """Load a saved tokenizer: a .model file is SentencePiece; a .json file a char tokenizer or
    a Hugging Face tokenizer.json, told apart by its content."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer file not found: {path}")
    if path.suffix == SentencePieceTokenizer.suffix:
        return SentencePieceTokenizer.load(path)
    if path.suffix == ".json":
        return _json_tokenizer(path).load(path)
    raise DataError(
        f"unknown tokenizer file {path}: expected a .json (a char tokenizer or a Hugging Face "
        "tokenizer.json) or a .model (SentencePiece) file"
    )
