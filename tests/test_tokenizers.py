"""Tokenizers: every string round-trips; bad inputs get clear messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from craft.data.tokenizers import (
    MAX_SENTENCE_BYTES,
    CharTokenizer,
    SentencePieceTokenizer,
    bounded_sentences,
    load_tokenizer,
)
from craft.errors import DataError

CORPUS = (
    "TYRION_LANNISTER: A mind needs books as a sword needs a whetstone.\n"
    "JON_SNOW: I'm not a Stark.  Never was.\n\n"
    "ARYA_STARK: Stick them with the pointy end! 123 -- done...\n"
) * 30


@pytest.fixture(scope="module")
def sentencepiece() -> SentencePieceTokenizer:
    return SentencePieceTokenizer.train(CORPUS, vocab_size=320)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1))
def test_char_round_trip(text: str) -> None:
    tok = CharTokenizer.train(text)
    ids = tok.encode(text)
    assert ids.shape == (len(text),)
    assert tok.decode(ids) == text
    assert ids.min() >= 0 and ids.max() < tok.vocab_size


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_sentencepiece_round_trips_any_string(
    sentencepiece: SentencePieceTokenizer, text: str
) -> None:
    """Byte fallback and identity normalization: even unseen characters and whitespace survive."""
    ids = sentencepiece.encode(text)
    assert sentencepiece.decode(ids) == text
    assert all(0 <= i < sentencepiece.vocab_size for i in ids)


def test_sentencepiece_compresses_its_training_text(sentencepiece: SentencePieceTokenizer) -> None:
    assert len(sentencepiece.encode(CORPUS)) < 0.8 * len(CORPUS)


def test_unigram_trains_and_round_trips() -> None:
    tok = SentencePieceTokenizer.train(CORPUS, vocab_size=300, model_type="unigram")
    assert tok.decode(tok.encode(CORPUS)) == CORPUS


def test_char_vocabulary_is_sorted_and_distinct() -> None:
    tok = CharTokenizer.train("banana\n")
    assert tok.chars == ["\n", "a", "b", "n"]
    assert tok.encode("nab").tolist() == [3, 1, 2]


def test_char_encode_names_missing_characters() -> None:
    tok = CharTokenizer.train("abc")
    with pytest.raises(
        DataError, match=r"lacks these characters: 'x' \(U\+0078\), 'é' \(U\+00E9\)"
    ):
        tok.encode("abxcé")
    with pytest.raises(DataError, match=r"lacks these characters: '🙂'"):
        tok.encode("a🙂")  # beyond the dense table


def test_decode_rejects_ids_outside_the_vocabulary(sentencepiece: SentencePieceTokenizer) -> None:
    with pytest.raises(DataError, match=r"token ids must lie in \[0, 3\)"):
        CharTokenizer.train("abc").decode([0, 3])
    with pytest.raises(DataError, match="token ids must lie in"):
        sentencepiece.decode([-1])


def test_save_and_load_keep_the_mapping(
    tmp_path: Path, sentencepiece: SentencePieceTokenizer
) -> None:
    char = CharTokenizer.train(CORPUS)
    for tok, name in ((char, "vocab.json"), (sentencepiece, "sp.model")):
        loaded = load_tokenizer(tok.save(tmp_path / name))
        assert type(loaded) is type(tok)
        assert np.array_equal(loaded.encode(CORPUS), tok.encode(CORPUS))
        assert loaded.vocab_size == tok.vocab_size


def test_load_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="tokenizer file not found"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(
        DataError,
        match=r"t.txt: expected a \.json \(a char tokenizer or a Hugging Face tokenizer.json\) "
        r"or a \.model \(SentencePiece\) file",
    ):
        load_tokenizer(tmp_path / "t.txt")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match=r"cannot read .*broken.json as JSON"):
        load_tokenizer(tmp_path / "broken.json")
    (tmp_path / "chars.json").write_text('{"kind": "char", "chars": ["a", "a"]}')
    with pytest.raises(DataError, match=r"cannot load a char tokenizer from .*chars.json"):
        load_tokenizer(tmp_path / "chars.json")
    (tmp_path / "list.json").write_text("[1]")  # a direct load of a non-object is no traceback
    with pytest.raises(DataError, match=r"cannot load a char tokenizer from .*list.json"):
        CharTokenizer.load(tmp_path / "list.json")
    (tmp_path / "broken.model").write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match="cannot load a SentencePiece model"):
        load_tokenizer(tmp_path / "broken.model")


def test_vocab_too_large_says_the_largest_that_fits() -> None:
    with pytest.raises(
        DataError, match=r"vocab_size=100000 is too large .*largest that fits is \d+"
    ):
        SentencePieceTokenizer.train(CORPUS, vocab_size=100_000)


def test_vocab_too_small_says_the_smallest() -> None:
    with pytest.raises(DataError, match=r"vocab_size=50 is too small: it needs at least \d+"):
        SentencePieceTokenizer.train(CORPUS, vocab_size=50)


def test_sentencepiece_trains_on_a_text_without_line_breaks() -> None:
    """SentencePiece skips sentences over 4,192 bytes; one long line used to leave it none
    (`[!sentences_.empty()]`)."""
    one_line = CORPUS.replace("\n", " ") * 3  # 13,000 characters
    tok = SentencePieceTokenizer.train(one_line, vocab_size=300)
    ids = tok.encode(one_line)
    assert tok.decode(ids) == one_line and len(ids) < len(one_line)  # it learned merges


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(st.sampled_from("ab é\u4e2d"), max_size=3000), max_size=4))
def test_bounded_sentences_cut_long_lines_before_spaces(lines: list[str]) -> None:
    sentences = list(bounded_sentences(lines))
    assert "".join(sentences) == "".join(lines)
    assert all(0 < len(s.encode()) <= MAX_SENTENCE_BYTES for s in sentences)
    short = [line for line in lines if line and len(line.encode()) <= MAX_SENTENCE_BYTES]
    assert all(line in sentences for line in short)  # lines that fit are kept whole


@pytest.fixture(scope="module")
def unigram() -> SentencePieceTokenizer:
    return SentencePieceTokenizer.train(CORPUS, vocab_size=300, model_type="unigram")


@settings(max_examples=100, deadline=None)
@given(
    head=st.text(st.sampled_from("TYRION: a mind needs books 123!é"), max_size=60),
    tail=st.text(st.sampled_from("JON_SNOW I'm not a Stark. never"), max_size=60),
)
def test_cutting_a_line_before_a_space_keeps_its_ids(
    sentencepiece: SentencePieceTokenizer, unigram: SentencePieceTokenizer, head: str, tail: str
) -> None:
    """`prepare` cuts a line longer than its read chunk before a space: no piece spans one."""
    for tok in (sentencepiece, unigram):
        whole = tok.encode(head + " " + tail)
        assert whole.tolist() == [*tok.encode(head), *tok.encode(" " + tail)]
