"""Preparing datasets: contiguous splits, dtypes, metadata, the cache and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from craft.data.config import DataConfig, TokenizerConfig
from craft.data.prepare import open_split, prepare, split_text, token_dtype
from craft.data.tokenizers import CharTokenizer, load_tokenizer
from craft.errors import DataError

TEXT = "".join(f"SPEAKER_{i % 7}: line number {i}, said plainly.\n" for i in range(400))


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "script.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def data(**fields: object) -> DataConfig:
    return DataConfig(**{"window": 16, **fields})  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(
    text=st.text(min_size=0, max_size=200),
    ratios=st.tuples(st.integers(0, 10), st.integers(0, 10), st.integers(1, 10)),
)
def test_split_text_is_contiguous_and_in_file_order(text: str, ratios: tuple[int, ...]) -> None:
    fractions = tuple(r / sum(ratios) for r in ratios)
    parts = split_text(text, fractions)  # type: ignore[arg-type]
    assert "".join(parts) == text
    for part, fraction in zip(parts[:2], fractions[:2], strict=True):
        assert abs(len(part) - fraction * len(text)) <= 1


def test_char_dataset_decodes_back_to_the_text(tmp_path: Path, text_file: Path) -> None:
    prepared = prepare(text_file, tmp_path / "out", data())
    tok = load_tokenizer(prepared.tokenizer_path)
    decoded = [tok.decode(np.asarray(prepared.split(name))) for name in ("train", "val", "test")]
    assert "".join(decoded) == TEXT
    assert len(decoded[0]) == round(0.9 * len(TEXT))
    meta = json.loads((tmp_path / "out/meta.json").read_text())
    assert meta["tokenizer"] == {
        "kind": "char",
        "file": "tokenizer.json",
        "settings": {},
        "given": None,
    }
    assert meta["vocab_size"] == len(set(TEXT)) and meta["dtype"] == "uint16"
    assert meta["tokens"] == {
        "train": len(decoded[0]),
        "val": len(decoded[1]),
        "test": len(decoded[2]),
    }
    assert meta["split_ratios"] == [0.9, 0.05, 0.05]
    assert len(meta["input"]["sha256"]) == 64
    assert open_split(tmp_path / "out", "val").dtype == np.uint16


def test_subword_dataset_trains_on_train_split_and_round_trips(
    tmp_path: Path, text_file: Path
) -> None:
    prepared = prepare(
        text_file, tmp_path / "out", data(tokenizer="subword"), TokenizerConfig(vocab_size=300)
    )
    tok = load_tokenizer(prepared.tokenizer_path)
    assert prepared.meta["tokenizer"]["kind"] == "sentencepiece"
    assert prepared.meta["tokenizer"]["settings"]["vocab_size"] == 300
    decoded = "".join(tok.decode(np.asarray(prepared.split(n))) for n in ("train", "val", "test"))
    assert decoded == TEXT
    assert sum(prepared.meta["tokens"].values()) < len(TEXT)


def test_existing_tokenizer_is_used_and_copied_beside_the_data(
    tmp_path: Path, text_file: Path
) -> None:
    vocab = CharTokenizer.train(TEXT + "XYZ").save(tmp_path / "vocab.json")
    prepared = prepare(text_file, tmp_path / "out", data(tokenizer_file=str(vocab)))
    assert prepared.meta["vocab_size"] == len(set(TEXT + "XYZ"))
    assert (tmp_path / "out/tokenizer.json").read_text() == vocab.read_text()


def test_tokenizer_kind_must_match_type(tmp_path: Path, text_file: Path) -> None:
    vocab = CharTokenizer.train(TEXT).save(tmp_path / "vocab.json")
    with pytest.raises(DataError, match="is a char tokenizer, but tokenizer=subword"):
        prepare(text_file, tmp_path / "out", data(tokenizer="subword", tokenizer_file=str(vocab)))


def test_large_vocabularies_use_uint32() -> None:
    assert token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32


def test_same_inputs_are_a_cache_hit(tmp_path: Path, text_file: Path) -> None:
    first = prepare(text_file, tmp_path / "out", data())
    stamp = (tmp_path / "out/train.bin").stat().st_mtime_ns
    second = prepare(text_file, tmp_path / "out", data())
    assert not first.cached and second.cached
    assert (tmp_path / "out/train.bin").stat().st_mtime_ns == stamp
    assert second.meta == first.meta


def test_changed_input_or_settings_are_prepared_again(tmp_path: Path, text_file: Path) -> None:
    prepare(text_file, tmp_path / "out", data())
    text_file.write_text(TEXT + "new line\n")
    assert not prepare(text_file, tmp_path / "out", data()).cached
    assert not prepare(text_file, tmp_path / "out", data(split_ratios=(0.8, 0.1, 0.1))).cached


def test_a_damaged_bin_is_not_a_cache_hit(tmp_path: Path, text_file: Path) -> None:
    prepare(text_file, tmp_path / "out", data())
    (tmp_path / "out/val.bin").write_bytes(b"\x00")
    again = prepare(text_file, tmp_path / "out", data())
    assert not again.cached and len(again.split("val")) == again.meta["tokens"]["val"]


def test_missing_input(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"input file not found: .*nope.txt"):
        prepare(tmp_path / "nope.txt", tmp_path / "out", data())


def test_empty_input(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match=r"input file is empty: .*empty.txt"):
        prepare(tmp_path / "empty.txt", tmp_path / "out", data())


def test_non_utf8_input_names_the_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(TEXT.encode()[:100] + "café".encode("latin-1") + TEXT.encode()[100:])
    with pytest.raises(
        DataError, match=r"latin1.txt is not UTF-8: byte\(s\) e9 at offset 103 .*--errors=replace"
    ):
        prepare(path, tmp_path / "out", data())
    prepared = prepare(path, tmp_path / "out", data(errors="replace"))
    tok = load_tokenizer(prepared.tokenizer_path)
    assert "caf\ufffd" in tok.decode(np.asarray(prepared.split("train")))


def test_split_too_small_for_one_block(tmp_path: Path, text_file: Path) -> None:
    with pytest.raises(
        DataError,
        match=r"the val split of .* has \d+ tokens, fewer than one window \(window=2048",
    ):
        prepare(text_file, tmp_path / "out", data(window=2048))


def test_block_check_also_applies_to_a_cached_dataset(tmp_path: Path, text_file: Path) -> None:
    prepare(text_file, tmp_path / "out", data())
    with pytest.raises(DataError, match="fewer than one window"):
        prepare(text_file, tmp_path / "out", data(window=2048))


def test_a_zero_ratio_split_may_be_empty(tmp_path: Path, text_file: Path) -> None:
    prepared = prepare(text_file, tmp_path / "out", data(split_ratios=(0.9, 0.1, 0.0)))
    assert prepared.meta["tokens"]["test"] == 0


def test_vocab_too_large_for_the_text(tmp_path: Path, text_file: Path) -> None:
    with pytest.raises(
        DataError, match=r"vocab_size=60000 is too large .*largest that fits is \d+"
    ):
        prepare(
            text_file,
            tmp_path / "out",
            data(tokenizer="subword"),
            TokenizerConfig(vocab_size=60000),
        )


def test_unknown_split_name(tmp_path: Path, text_file: Path) -> None:
    prepare(text_file, tmp_path / "out", data())
    with pytest.raises(DataError, match="unknown split 'dev'"):
        open_split(tmp_path / "out", "dev")
