"""Preparing datasets: contiguous splits, dtypes, metadata, the cache, bad inputs, integrity
checks, streaming in chunks and concurrent runs."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from craft.data import text as text_module
from craft.data.config import DataConfig, TokenizerConfig
from craft.data.prepare import (
    encoding_units,
    open_split,
    prepare,
    split_bounds,
    split_pieces,
    split_text,
    token_dtype,
)
from craft.data.text import iter_text, read_text
from craft.data.tokenizers import CharTokenizer, load_tokenizer
from craft.errors import DataError
from craft.tasks.lm import LanguageModeling
from tests.conftest import CliRunner
from tests.together import run_together

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


def test_a_zero_test_ratio_leaves_test_empty_and_reading_it_says_so(
    tmp_path: Path, text_file: Path
) -> None:
    prepared = prepare(text_file, tmp_path / "out", data(split_ratios=(0.9, 0.1, 0.0)))
    assert prepared.meta["tokens"]["test"] == 0
    with pytest.raises(
        DataError,
        match=r"the test split of .*out is empty \(prepared with split_ratios=\[0.9, 0.1, 0.0\]\);"
        " prepare the text again with a non-zero test ratio",
    ):
        open_split(tmp_path / "out", "test")


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


# -- empty splits ---------------------------------------------------------------------------


def test_a_zero_val_ratio_is_refused_when_the_config_is_checked(
    run_cli: CliRunner, tmp_path: Path, text_file: Path
) -> None:
    result = run_cli("prepare", f"--input={text_file}", "--output_dir=out", "--split_ratios=1,0,0")
    assert result.returncode == 2
    assert (
        "DataConfig.split_ratios = (1, 0, 0) (flag --split_ratios): split ratios [1.0, 0.0, 0.0] "
        "leave the val split empty; training needs text in both (test may be 0)"
    ) in result.stderr
    assert not (tmp_path / "out").exists()


def test_prepare_refuses_a_zero_val_ratio_before_anything_is_written(
    tmp_path: Path, text_file: Path
) -> None:
    """prepare's own check, for configs built without validation (`model_construct`)."""
    unchecked = DataConfig.model_construct(
        **{**dict(DataConfig()), "split_ratios": (1.0, 0.0, 0.0)}
    )
    with pytest.raises(
        DataError,
        match=r"split_ratios=\[1.0, 0.0, 0.0\] leave the val split of .*script.txt empty, but "
        r"training needs text in train and val; give val a share \(e.g. --split_ratios=",
    ):
        prepare(text_file, tmp_path / "out", unchecked)
    # No meta.json, no bins, no temporaries: only the folder's lock file.
    assert [p.name for p in (tmp_path / "out").iterdir()] == [".lock"]


def test_a_text_too_short_for_a_split_is_refused(tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("hi\n")  # 3 characters: 90 % is all of them
    with pytest.raises(
        DataError,
        match=r"the val split of .*short.txt comes out empty \(3 characters split "
        r"\[0.9, 0.05, 0.05\]\); use a longer text or a larger val ratio",
    ):
        prepare(short, tmp_path / "out", DataConfig())


# -- integrity: checksums, vocabulary, format ------------------------------------------------


def corrupt_same_length(path: Path) -> None:
    """Overwrite the first ids with 0xFFFF: same size, other bytes (what a bad copy does)."""
    payload = bytearray(path.read_bytes())
    payload[:8] = b"\xff" * 8
    path.write_bytes(bytes(payload))


def test_meta_records_each_split_sha256(tmp_path: Path, text_file: Path) -> None:
    import hashlib

    prepared = prepare(text_file, tmp_path / "out", data())
    for name in ("train", "val", "test"):
        payload = (tmp_path / "out" / f"{name}.bin").read_bytes()
        assert prepared.meta["sha256"][name] == hashlib.sha256(payload).hexdigest()
    assert prepared.meta["format"] == 2


def test_a_same_length_corrupted_bin_is_prepared_again(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = prepare(text_file, tmp_path / "out", data())
    original = (tmp_path / "out/train.bin").read_bytes()
    corrupt_same_length(tmp_path / "out/train.bin")
    again = prepare(text_file, tmp_path / "out", data())
    assert not again.cached and again.meta == first.meta
    assert (tmp_path / "out/train.bin").read_bytes() == original
    assert "train.bin does not match the sha256 that prepare recorded in meta.json" in (
        capsys.readouterr().err
    )


def test_reading_a_corrupted_split_names_the_file_and_what_to_do(
    tmp_path: Path, text_file: Path
) -> None:
    prepare(text_file, tmp_path / "out", data())
    corrupt_same_length(tmp_path / "out/val.bin")
    with pytest.raises(
        DataError,
        match=r"out/val.bin does not match the sha256 .*; run `python -m craft.main prepare` "
        r"again \(it replaces the folder\) or delete .*out and prepare the data anew",
    ):
        open_split(tmp_path / "out", "val")
    (tmp_path / "out/val.bin").write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match=r"val.bin holds 2 bytes, but meta.json records \d+"):
        open_split(tmp_path / "out", "val")


def test_ids_outside_the_vocabulary_are_refused_when_a_split_opens(
    tmp_path: Path, text_file: Path
) -> None:
    prepare(text_file, tmp_path / "out", data())
    meta_path = tmp_path / "out/meta.json"
    meta = json.loads(meta_path.read_text())
    meta["vocab_size"] = 5  # the ids on disk go higher
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(
        DataError, match=r"train.bin holds token id \d+, outside the 5-symbol vocabulary"
    ):
        open_split(tmp_path / "out", "train")


def lm_for_checkpoint(prepared_dir: Path, tokenizer_dir: Path) -> LanguageModeling:
    """The lm task as `evaluate` opens it: the checkpoint's tokenizer, the data folder given."""
    meta = {
        "task_meta": {"tokenizer": "tokenizer.json"},
        "configs": {"DataConfig": data().model_dump()},
    }
    return LanguageModeling.for_checkpoint(meta, tokenizer_dir, str(prepared_dir))


def test_the_lm_task_checks_a_split_as_it_opens_it(tmp_path: Path, text_file: Path) -> None:
    prepare(text_file, tmp_path / "out", data())
    task = lm_for_checkpoint(tmp_path / "out", tmp_path / "out")
    assert len(task.split("val")) == task.meta["tokens"]["val"]
    corrupt_same_length(tmp_path / "out/train.bin")
    with pytest.raises(DataError, match=r"out/train.bin does not match the sha256"):
        task.split("train")


def test_an_older_folder_is_prepared_again_and_refused_where_only_read(
    tmp_path: Path, text_file: Path
) -> None:
    prepare(text_file, tmp_path / "out", data())
    meta_path = tmp_path / "out/meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["sha256"]  # what format 1 wrote
    meta_path.write_text(json.dumps({**meta, "format": 1, "fingerprint": "format-1 recipe"}))
    with pytest.raises(
        DataError,
        match=r"meta.json has format 1, and this Craft reads format 2 \(older folders lack the "
        r"split checksums\); run `python -m craft.main prepare` again",
    ):
        lm_for_checkpoint(tmp_path / "out", tmp_path / "out")
    again = prepare(text_file, tmp_path / "out", data())
    assert not again.cached and again.meta["format"] == 2


def test_unreadable_meta_is_a_clear_error(tmp_path: Path, text_file: Path) -> None:
    prepare(text_file, tmp_path / "out", data())
    (tmp_path / "out/meta.json").write_text("{not json")
    with pytest.raises(DataError, match=r"cannot read .*meta.json .*; run `python -m craft"):
        open_split(tmp_path / "out", "val")
    assert not prepare(text_file, tmp_path / "out", data()).cached


# -- streaming -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(st.sampled_from("ab \n\u00e9"), max_size=80),
    cuts=st.lists(st.integers(0, 80), max_size=6),
    ratios=st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(1, 5)),
)
def test_encoding_units_regroup_the_splits_where_no_token_spans_the_cut(
    text: str, cuts: list[int], ratios: tuple[int, ...]
) -> None:
    """Any chunking gives units that join to each split, each ending the split or just before
    a space or line break that follows a non-space character."""
    fractions = tuple(r / sum(ratios) for r in ratios)
    edges = sorted({0, len(text), *(c for c in cuts if c < len(text))})
    chunks = [text[a:b] for a, b in itertools.pairwise(edges)]
    units = list(encoding_units(split_pieces(chunks, split_bounds(len(text), fractions))))  # type: ignore[arg-type]
    parts = split_text(text, fractions)  # type: ignore[arg-type]
    for index, part in enumerate(parts):
        assert "".join(u for i, u in units if i == index) == part
    for (index, unit), (next_index, next_unit) in itertools.pairwise(units):
        assert unit
        # No token spans the cut: a non-space character, then a space or a line break.
        safe_cut = not unit[-1].isspace() and next_unit[0] in " \n"
        assert safe_cut or index != next_index
    assert [i for i, _ in units] == sorted(i for i, _ in units)


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(st.characters(codec="utf-8"), min_size=30, max_size=300),
    chunk_bytes=st.integers(1, 64),
)
def test_char_prepare_in_chunks_equals_encoding_the_whole_text(text: str, chunk_bytes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setattr(text_module, "CHUNK_BYTES", chunk_bytes)
        source = Path(tmp) / "text.txt"
        source.write_bytes(text.encode())  # no newline translation
        ratios = (0.8, 0.1, 0.1)
        prepared = prepare(source, Path(tmp) / "out", DataConfig(split_ratios=ratios))
        whole = CharTokenizer.train(text)
        assert load_tokenizer(prepared.tokenizer_path).chars == whole.chars  # type: ignore[attr-defined]
        for name, part in zip(("train", "val", "test"), split_text(text, ratios), strict=True):
            assert np.array_equal(np.asarray(prepared.split(name)), whole.encode(part))


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=60), chunk_bytes=st.integers(1, 16))
def test_reading_in_chunks_decodes_like_reading_at_once(raw: bytes, chunk_bytes: int) -> None:
    """Replacement characters and the offset of the first bad byte do not depend on chunking."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.txt"
        path.write_bytes(raw + b".")  # never empty
        raw += b"."
        assert "".join(iter_text(path, "replace", chunk_bytes=chunk_bytes)) == raw.decode(
            "utf-8", "replace"
        )
        try:
            expected = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            with pytest.raises(DataError, match=f"at offset {error.start} "):
                list(iter_text(path, chunk_bytes=chunk_bytes))
        else:
            assert "".join(iter_text(path, chunk_bytes=chunk_bytes)) == expected
            assert read_text(path)[0] == expected


def test_subword_prepare_in_chunks_equals_encoding_the_whole_split(
    tmp_path: Path, text_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = prepare(
        text_file, tmp_path / "whole", data(tokenizer="subword"), TokenizerConfig(vocab_size=300)
    )
    monkeypatch.setattr(text_module, "CHUNK_BYTES", 100)
    chunked = prepare(
        text_file, tmp_path / "chunked", data(tokenizer="subword"), TokenizerConfig(vocab_size=300)
    )
    tok = load_tokenizer(whole.tokenizer_path)
    for name, part in zip(
        ("train", "val", "test"), split_text(TEXT, (0.9, 0.05, 0.05)), strict=True
    ):
        assert np.array_equal(np.asarray(chunked.split(name)), np.asarray(whole.split(name)))
        assert np.array_equal(np.asarray(whole.split(name)), tok.encode(part))
    assert whole.tokenizer_path.read_bytes() == chunked.tokenizer_path.read_bytes()


def test_subword_trains_on_a_sample_of_a_large_train_split(
    tmp_path: Path, text_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from craft.data import prepare as prepare_module

    monkeypatch.setattr(prepare_module, "SENTENCEPIECE_SAMPLE_CHARS", 2000)
    prepared = prepare(
        text_file, tmp_path / "out", data(tokenizer="subword"), TokenizerConfig(vocab_size=300)
    )
    tok = load_tokenizer(prepared.tokenizer_path)
    decoded = "".join(tok.decode(np.asarray(prepared.split(n))) for n in ("train", "val", "test"))
    assert decoded == TEXT


def test_subword_prepare_of_a_text_without_line_breaks(tmp_path: Path) -> None:
    words = TEXT.replace("\n", " ") * 2  # 34,000 characters on one line
    source = tmp_path / "one_line.txt"
    source.write_text(words)
    prepared = prepare(
        source, tmp_path / "out", data(tokenizer="subword"), TokenizerConfig(vocab_size=300)
    )
    tok = load_tokenizer(prepared.tokenizer_path)
    decoded = "".join(tok.decode(np.asarray(prepared.split(n))) for n in ("train", "val", "test"))
    assert decoded == words and prepared.meta["tokens"]["train"] < 0.9 * len(words)


# -- concurrent runs -------------------------------------------------------------------------


@pytest.mark.slow  # two interpreters start per pair: about 4 s a pair on 2 cores
def test_concurrent_prepare_runs_on_one_folder_both_succeed(tmp_path: Path) -> None:
    """Pairs of CLI runs race on one folder: each succeeds and the folder reads back whole."""
    source = tmp_path / "big.txt"
    # About 3 MB: preparing takes longer than the spread of the two interpreters' start-up.
    source.write_text(TEXT * 150)
    env = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    for pair in range(2):
        out = tmp_path / f"out{pair}"
        command = [
            sys.executable, "-m", "craft.main", "prepare", f"--input={source}",
            f"--output_dir={out}",
        ]  # fmt: skip
        runs = [
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)
        ]
        said = [run.communicate(timeout=120) for run in runs]
        for run, (_, err) in zip(runs, said, strict=True):
            assert run.returncode == 0, err.decode()
        states = sorted(out.decode().split(": ")[1].split(";")[0] for out, _ in said)
        assert states == ["cached", "prepared"]  # one prepared, the other waited and found it
        tok = load_tokenizer(out / "tokenizer.json")
        decoded = "".join(
            tok.decode(np.asarray(open_split(out, n))) for n in ("train", "val", "test")
        )
        assert decoded == TEXT * 150
        assert not list(out.glob("*.tmp"))


def test_concurrent_prepare_calls_take_turns(tmp_path: Path) -> None:
    """Threads started together race on one folder (as processes do, each with its own lock
    handle): every call succeeds, one prepares and the others find it cached."""
    source = tmp_path / "text.txt"
    source.write_text(TEXT * 20)

    for attempt in range(5):
        out = tmp_path / f"out{attempt}"
        results = run_together(lambda: prepare(source, out, data()).cached)  # noqa: B023
        assert sorted(map(str, results)) == ["False", "True", "True"]
        assert len(open_split(out, "train")) == round(0.9 * len(TEXT * 20))


def test_a_running_task_keeps_the_data_it_opened(tmp_path: Path, text_file: Path) -> None:
    """Another recipe prepared into the same folder after a run opened it: the run's splits
    (mapped when it opened) still hold the data it verified."""
    out = tmp_path / "shared"
    configs = {"DataConfig": data(source=str(text_file), prepared_dir=str(out))}
    task = LanguageModeling.open(configs)  # type: ignore[arg-type]
    dtype = task.meta["dtype"]  # read the files directly: the task's own splits stay untouched
    before = {name: np.fromfile(out / f"{name}.bin", dtype=dtype) for name in ("train", "val")}
    prepare(text_file, out, data(source=str(text_file), split_ratios=(0.5, 0.4, 0.1)))
    assert len(open_split(out, "val")) != len(before["val"])  # the folder did change
    for name, ids in before.items():
        assert np.array_equal(task.split(name), ids)


def test_a_run_opens_what_it_just_prepared_without_hashing_again(
    tmp_path: Path, text_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After this run's `prepare` checked the folder, `open(verified=True)` (what every torchrun
    rank does) reads it without a second full hash; a plain `open` checks it again."""
    from craft.data import prepare as prepare_module

    configs = {"DataConfig": data(source=str(text_file), prepared_dir=str(tmp_path / "p"))}
    LanguageModeling.prepare(configs)  # type: ignore[arg-type]
    hashed: list[str] = []
    real = prepare_module._split_problem
    monkeypatch.setattr(
        prepare_module, "_split_problem", lambda d, n, m: hashed.append(n) or real(d, n, m)
    )
    task = LanguageModeling.open(configs, verified=True)  # type: ignore[arg-type]
    assert hashed == [] and len(task.split("val")) == task.meta["tokens"]["val"]
    LanguageModeling.open(configs)  # type: ignore[arg-type]
    assert sorted(hashed) == ["test", "train", "val"]
