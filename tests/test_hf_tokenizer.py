"""Hugging Face tokenizers as a Craft tokenizer kind: ids and text equal transformers', GPT-2's
vocab.json + merges.txt, save and load, prepare (whole and streamed), and bad files.

Everything is built here: a tiny byte-level BPE trained on GOT-like text, nothing from a hub.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from craft.data import text as text_module
from craft.data.config import DataConfig
from craft.data.prepare import encoding_units, prepare, split_pieces, split_text
from craft.data.tokenizers import CharTokenizer, HFTokenizer, load_tokenizer
from craft.errors import DataError

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

SPEAKERS = ["TYRION_LANNISTER", "JON_SNOW", "ARYA_STARK", "CERSEI", "NED", "WILL"]
# fmt: off
WORDS = ["the", "a", "winter", "is", "coming", "you", "know", "nothing", "I'm", "not", "Stark",
         "never", "stick", "them", "with", "pointy", "end", "king's", "landing", "wall", "north",
         "lord's", "we'll", "they're", "300", "men", "1", "2", "--", "...", "Khaleesi"]
# fmt: on
PUNCTUATION = [".", "!", "?", ",", "...", ""]


def got_line(rng: random.Random) -> str:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
    return f"{rng.choice(SPEAKERS)}: {words}{rng.choice(PUNCTUATION)}"


def got_like(lines: int, seed: int = 0) -> str:
    """Lines like the GOT scripts: a speaker, words, single spaces, a blank line now and then."""
    rng = random.Random(seed)
    return "".join(got_line(rng) + rng.choice(["\n"] * 8 + ["\n\n"]) for _ in range(lines))


# Indented blocks and runs of blank lines too, so the tokenizer learns whitespace-run tokens.
TRAIN_TEXT = got_like(600) + "".join(
    f"SCENE {i}:\n\n\n    INT. WINTERFELL\n\t\tnight  \n  \n" for i in range(100)
)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tokenizer.json, and GPT-2-style vocab.json + merges.txt, of a byte-level BPE."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TRAIN_TEXT], trainer=trainer)
    folder = tmp_path_factory.mktemp("hf-tokenizer")
    tok.save(str(folder / "tokenizer.json"))
    tok.model.save(str(folder))  # vocab.json + merges.txt
    return folder


@pytest.fixture(scope="module")
def craft_tok(hf_dir: Path) -> HFTokenizer:
    return HFTokenizer.load(hf_dir / "tokenizer.json")


@pytest.fixture(scope="module")
def hf_tok(hf_dir: Path) -> object:
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(hf_dir / "tokenizer.json"))


# Random unicode, and text built from pieces a tokenizer finds hard: emoji (4 UTF-8 bytes), a
# ZWJ sequence, combining marks, whitespace runs, CRLF, the special token written out.
PIECES = ["🙂", "👩‍👩‍👧", "é", "e\u0301", "\n", "\n\n\n", "  ", "\t", "\r\n", "<|endoftext|>", "'s"]
TEXTS = st.one_of(
    st.text(max_size=60),
    st.lists(st.one_of(st.sampled_from(PIECES + WORDS), st.text(max_size=3)), max_size=20).map(
        " ".join
    ),
)


@settings(max_examples=300, deadline=None)
@given(text=TEXTS)
def test_encode_and_decode_equal_transformers(
    craft_tok: HFTokenizer, hf_tok: object, text: str
) -> None:
    ids = craft_tok.encode(text)
    assert ids.dtype == np.int64 and ids.ndim == 1
    assert ids.tolist() == hf_tok.encode(text, add_special_tokens=False)  # type: ignore[attr-defined]
    assert craft_tok.decode(ids) == hf_tok.decode(ids.tolist()) == text  # type: ignore[attr-defined]


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.integers(0, 499), max_size=30))
def test_any_ids_decode_as_in_transformers(
    craft_tok: HFTokenizer, hf_tok: object, ids: list[int]
) -> None:
    """Even ids that split a character's bytes (they decode to U+FFFD, as in transformers)."""
    assert craft_tok.decode(ids) == hf_tok.decode(ids)  # type: ignore[attr-defined]
    assert craft_tok.decode(np.array(ids, dtype=np.uint16)) == craft_tok.decode(ids)


def test_vocab_size_eos_and_special_tokens(craft_tok: HFTokenizer, hf_tok: object) -> None:
    assert craft_tok.kind == "hf" and craft_tok.suffix == ".json"
    assert craft_tok.vocab_size == len(hf_tok) == 500  # type: ignore[arg-type]
    assert craft_tok.eos_id == 0
    # No special tokens are added, but one written in the text is recognized.
    assert craft_tok.encode("").tolist() == []
    assert craft_tok.encode("a<|endoftext|>b").tolist()[1] == 0
    with pytest.raises(DataError, match=r"token ids must lie in \[0, 500\)"):
        craft_tok.decode([1, 500])
    with pytest.raises(DataError, match=r"token ids must lie in \[0, 500\)"):
        craft_tok.decode([-1])


def test_gpt2_vocab_and_merges_equal_transformers(hf_dir: Path, craft_tok: HFTokenizer) -> None:
    """transformers 5 builds GPT-2's tokenizer from the files through `from_pretrained` or
    `vocab=`/`merges=` paths (`GPT2TokenizerFast(vocab_file=...)` ignores its files there)."""
    gpt2 = HFTokenizer.from_vocab_merges(hf_dir / "vocab.json", hf_dir / "merges.txt")
    references = [
        transformers.GPT2TokenizerFast.from_pretrained(str(hf_dir)),
        transformers.GPT2Tokenizer.from_pretrained(str(hf_dir)),
        transformers.GPT2Tokenizer(
            vocab=str(hf_dir / "vocab.json"), merges=str(hf_dir / "merges.txt")
        ),
    ]
    assert gpt2.vocab_size == craft_tok.vocab_size == 500 and gpt2.eos_id == 0
    rng = random.Random(1)
    texts = [got_like(3, seed) for seed in range(20)] + ["", "<|endoftext|> 🙂\n\n\n  x\té"]
    texts += ["".join(rng.choice(PIECES + WORDS + [" "]) for _ in range(30)) for _ in range(50)]
    for text in texts:
        ids = gpt2.encode(text).tolist()
        assert ids == craft_tok.encode(text).tolist()
        for reference in references:
            assert len(reference) == 500
            assert ids == reference.encode(text, add_special_tokens=False)
            assert gpt2.decode(ids) == reference.decode(ids) == text


def test_gpt2_vocab_without_endoftext_appends_it_as_transformers_does(
    tmp_path: Path, hf_dir: Path
) -> None:
    vocab = json.loads((hf_dir / "vocab.json").read_text())
    del vocab["<|endoftext|>"]  # id 0; the others are renumbered 0..498
    renumbered = {token: i for i, token in enumerate(sorted(vocab, key=vocab.__getitem__))}
    (tmp_path / "vocab.json").write_text(json.dumps(renumbered))
    (tmp_path / "merges.txt").write_text((hf_dir / "merges.txt").read_text())
    gpt2 = HFTokenizer.from_vocab_merges(tmp_path / "vocab.json", tmp_path / "merges.txt")
    reference = transformers.GPT2Tokenizer.from_pretrained(str(tmp_path))
    assert gpt2.eos_id == reference.convert_tokens_to_ids("<|endoftext|>") == 499
    assert gpt2.vocab_size == len(reference) == 500
    text = "WILL: winter<|endoftext|>is coming."
    assert gpt2.encode(text).tolist() == reference.encode(text, add_special_tokens=False)


def test_save_loads_in_transformers_and_back(
    tmp_path: Path, hf_dir: Path, craft_tok: HFTokenizer
) -> None:
    gpt2 = HFTokenizer.from_vocab_merges(hf_dir / "vocab.json", hf_dir / "merges.txt")
    (tmp_path / "out").mkdir()
    saved = gpt2.save(tmp_path / "out" / "tokenizer.json")
    assert saved == tmp_path / "out" / "tokenizer.json"
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(saved))
    again = load_tokenizer(saved)
    assert isinstance(again, HFTokenizer) and again.vocab_size == 500
    text = got_like(10) + " 🙂\n\n\n   <|endoftext|>"
    ids = craft_tok.encode(text).tolist()
    for tok in (auto, fast):
        assert tok.encode(text, add_special_tokens=False) == ids
        assert tok.decode(ids) == text
    assert again.encode(text).tolist() == ids


def test_truncation_and_padding_in_the_file_are_ignored_as_transformers_does(
    tmp_path: Path, hf_dir: Path
) -> None:
    payload = json.loads((hf_dir / "tokenizer.json").read_text())
    payload["truncation"] = {
        "direction": "Right",
        "max_length": 4,
        "strategy": "LongestFirst",
        "stride": 0,
    }
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(payload))
    text = got_like(5)
    reference = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    ids = HFTokenizer.load(path).encode(text).tolist()
    assert len(ids) > 4 and ids == reference.encode(text, add_special_tokens=False)


# -- prepare ---------------------------------------------------------------------------------


def prepare_with(tok_path: Path, text: str, folder: Path, **fields: object) -> tuple:
    source = folder / "script.txt"
    source.write_bytes(text.encode())  # no newline translation
    data = DataConfig(
        **{"tokenizer": "subword", "tokenizer_file": str(tok_path), "window": 8, **fields}  # type: ignore[arg-type]
    )
    return prepare(source, folder / "out", data), data


def test_prepare_with_a_tokenizer_json_gives_transformers_ids(
    tmp_path: Path, hf_dir: Path, hf_tok: object
) -> None:
    text = got_like(300, seed=3)
    prepared, data = prepare_with(hf_dir / "tokenizer.json", text, tmp_path)
    assert prepared.meta["tokenizer"]["kind"] == "hf"
    assert prepared.meta["vocab_size"] == 500 and prepared.meta["dtype"] == "uint16"
    assert isinstance(load_tokenizer(prepared.tokenizer_path), HFTokenizer)
    for name, part in zip(
        ("train", "val", "test"), split_text(text, data.split_ratios), strict=True
    ):
        expected = hf_tok.encode(part, add_special_tokens=False)  # type: ignore[attr-defined]
        assert np.asarray(prepared.split(name)).tolist() == expected


def test_prepare_refuses_a_tokenizer_json_for_char_data(tmp_path: Path, hf_dir: Path) -> None:
    with pytest.raises(
        DataError, match=r"is a hf tokenizer, but tokenizer=char; pass --type=subword"
    ):
        prepare_with(hf_dir / "tokenizer.json", got_like(50), tmp_path, tokenizer="char")


def test_prepare_stores_ids_past_65536_as_uint32(tmp_path: Path) -> None:
    """A vocabulary larger than uint16 holds (70,001 here, GPT-2's 50,257 fits uint16)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    vocab.update({f"<unused{i}>": i for i in range(len(vocab), 70_000)})
    tok = Tokenizer(models.BPE(vocab, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    tok.save(str(tmp_path / "big.json"))
    text = "".join(f"{got_line(random.Random(i))}<|endoftext|>" for i in range(40))
    prepared, data = prepare_with(tmp_path / "big.json", text, tmp_path)
    assert prepared.meta["vocab_size"] == 70_001 and prepared.meta["dtype"] == "uint32"
    train = np.asarray(prepared.split("train"))
    assert train.dtype == np.uint32 and 70_000 in train.tolist()
    expected = HFTokenizer.load(tmp_path / "big.json").encode(
        split_text(text, data.split_ratios)[0]
    )
    assert train.tolist() == expected.tolist()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), lines=st.integers(5, 40), chunk_bytes=st.integers(1, 200))
def test_prepare_in_chunks_equals_encoding_each_split_whole(
    hf_dir: Path, craft_tok: HFTokenizer, seed: int, lines: int, chunk_bytes: int
) -> None:
    """Streaming gives the ids of each whole split on GOT-like text: byte-level BPE never merges
    across a pre-tokenizer split, and prepare cuts where no pre-token spans the cut."""
    text = got_like(lines, seed)
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setattr(text_module, "CHUNK_BYTES", chunk_bytes)
        prepared, data = prepare_with(hf_dir / "tokenizer.json", text, Path(tmp), window=1)
        parts = split_text(text, data.split_ratios)
        for name, part in zip(("train", "val", "test"), parts, strict=True):
            assert np.asarray(prepared.split(name)).tolist() == craft_tok.encode(part).tolist()


@pytest.mark.parametrize(
    "chunks",
    [
        ["NED: winter\n", "    is coming\n"],  # an indented line after a chunk's last line break
        ["NED: winter is coming.\n", "\n"],  # a blank line ending the text
    ],
)
def test_streamed_units_equal_the_whole_text_around_whitespace_runs(
    craft_tok: HFTokenizer, chunks: list[str]
) -> None:
    text = "".join(chunks)
    units = [unit for _, unit in encoding_units(split_pieces(chunks, (len(text), len(text))))]
    streamed = np.concatenate([craft_tok.encode(unit) for unit in units]).tolist()
    assert streamed == craft_tok.encode(text).tolist()


# -- bad files -------------------------------------------------------------------------------


def test_missing_tokenizers_library_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, hf_dir: Path
) -> None:
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # `import tokenizers` now fails
    hint = r"need the `tokenizers` package; install the hf extra: pip install -e '\.\[hf\]'"
    with pytest.raises(DataError, match=hint):
        load_tokenizer(hf_dir / "tokenizer.json")
    with pytest.raises(DataError, match=hint):
        HFTokenizer.from_vocab_merges(hf_dir / "vocab.json", hf_dir / "merges.txt")


def test_json_files_are_told_apart_by_content(tmp_path: Path, hf_dir: Path) -> None:
    char = CharTokenizer.train("winter").save(tmp_path / "chars.json")
    assert isinstance(load_tokenizer(char), CharTokenizer)
    assert isinstance(load_tokenizer(hf_dir / "tokenizer.json"), HFTokenizer)
    for payload in ({"kind": "bpe"}, [1, 2], {"vocab": {}}, "text", None):
        path = tmp_path / "other.json"
        path.write_text(json.dumps(payload))
        with pytest.raises(
            DataError,
            match=r"other.json is not a tokenizer Craft knows: expected a Craft char tokenizer "
            r"\(\{\"kind\": \"char\", \.\.\.\}\) or a Hugging Face tokenizer.json "
            r"\(with a \"model\"\)",
        ):
            load_tokenizer(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", r"cannot read .*bad.json as JSON: Expecting property name"),
        (b"\xff\xfe{}", r"cannot read .*bad.json as JSON: 'utf-8' codec can't decode"),
        (b"[" * 100_000 + b"]" * 100_000, r"cannot read .*bad.json as JSON: maximum recursion"),
        (
            b'{"model": 1}',
            r"cannot load a Hugging Face tokenizer from .*bad.json: it is not a "
            r"tokenizer.json \(no \"model\" object\)",
        ),
        (
            b'{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}}',
            r"cannot load a Hugging Face tokenizer from .*bad.json: Token `b` out of vocabulary",
        ),
        # The merged token is missing: `tokenizers` panics (a BaseException) on this one.
        (
            b'{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": [["a", "b"]]}}',
            r"cannot load a Hugging Face tokenizer from .*bad.json: .*out of range",
        ),
        (
            b'{"model": {"type": "WordLevel", "vocab": {}, "unk_token": "x"}}',
            r"cannot load a Hugging Face tokenizer from .*bad.json: its vocabulary is empty",
        ),
    ],
)
def test_malformed_json_is_a_data_error_naming_the_file(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_tokenizer(path)


def test_bad_gpt2_files_are_data_errors_naming_them(tmp_path: Path, hf_dir: Path) -> None:
    vocab, merges = tmp_path / "vocab.json", tmp_path / "merges.txt"
    with pytest.raises(DataError, match=r"GPT-2 tokenizer file not found: .*vocab.json"):
        HFTokenizer.from_vocab_merges(vocab, hf_dir / "merges.txt")
    vocab.write_text('{"a": "zero"}')
    merges.write_text("#version: 0.2\na b\n")
    with pytest.raises(
        DataError,
        match=r"cannot build a GPT-2 tokenizer from .*vocab.json and .*merges.txt \(expected a "
        r"JSON object \{token: id\} and a merges.txt of 'left right' lines\): ",
    ):
        HFTokenizer.from_vocab_merges(vocab, merges)
    vocab.write_text('{"a": 0}')
    with pytest.raises(DataError, match=r"cannot build a GPT-2 tokenizer from .*merges.txt"):
        HFTokenizer.from_vocab_merges(vocab, merges)
