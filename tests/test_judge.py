"""The judge: trained on first use (a tiny recipe on synthetic digits), cached, retrained when
damaged, trained once by concurrent callers, never left half-written."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from craft import judge as judges
from craft.judge import RECIPE, JudgeRecipe, ensure_judge, judge_dir, load_judge, train_judge
from craft.models import cnn
from craft.nn import linear
from craft.train.config import TrainConfig
from tests.digits import write_digits
from tests.together import run_together

TINY = JudgeRecipe(steps=6, batch_size=32, val_size=100, channels=(4, 8), hidden=16, warmup_steps=2)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    write_digits(tmp_path / "data", train=300, test=120)
    return tmp_path / "data"


def ensure(data_dir: Path, messages: list[str]) -> judges.Judge:
    return ensure_judge(data_dir, device="cpu", log=messages.append, recipe=TINY)


def test_the_recipe_is_pinned() -> None:
    # Changing the recipe moves the judge to a new folder: every cached judge is trained again
    # and scores change. Update this value only on purpose.
    assert RECIPE.identity == "544d635b2a"
    assert judge_dir("data") == Path("data/judges/mnist-cnn-544d635b2a")
    assert judge_dir("data", TINY) != judge_dir("data")
    assert dataclasses.replace(TINY, seed=1).identity != TINY.identity
    configs = RECIPE.configs("data", "somewhere", "cpu")
    assert configs["CNNConfig"] == cnn.CNNConfig(channels=(32, 64), kernel=3, hidden=128)
    train = configs["TrainConfig"]
    assert isinstance(train, TrainConfig) and (train.steps, train.batch_size) == (430, 256)
    assert not train.compile  # eager: bit-identical judges from identical CPU runs


def test_first_use_trains_then_the_cache_answers(data_dir: Path) -> None:
    messages: list[str] = []
    judge = ensure(data_dir, messages)
    folder = judge_dir(data_dir, TINY)
    assert len(messages) == 2 and "first use" in messages[0], messages
    assert messages[1].startswith("craft: judge trained in ") and str(folder) in messages[1]
    assert sorted(p.name for p in folder.parent.iterdir()) == [
        f".{folder.name}.lock", folder.name
    ]  # fmt: skip
    assert sorted(p.name for p in folder.iterdir()) == ["judge.json", "judge.safetensors"]
    record = json.loads((folder / "judge.json").read_text())
    assert record["identity"] == TINY.identity and record["recipe"]["steps"] == 6
    assert 0.0 <= record["test_accuracy"] <= 1.0
    mtime = (folder / "judge.safetensors").stat().st_mtime_ns

    again = ensure(data_dir, messages)
    assert len(messages) == 2  # nothing said, nothing trained
    assert (folder / "judge.safetensors").stat().st_mtime_ns == mtime
    for name, value in again.params["head"].items():
        assert torch.equal(value, judge.params["head"][name])


def test_the_judge_sees_pixels_in_batches(data_dir: Path) -> None:
    judge = ensure(data_dir, [])
    images = torch.randint(0, 256, (23, 1, 28, 28), dtype=torch.uint8)
    logits, feats = judge.logits(images), judge.features(images)
    assert logits.shape == (23, 10) and feats.shape == (23, 16)
    # The logits are the head over the features (cnn.apply = head(cnn.features)).
    torch.testing.assert_close(logits, linear(judge.params["head"], feats))
    # uint8 pixels and floats in [0, 1] are the same images; the batch size changes nothing.
    small = dataclasses.replace(judge, batch_size=5)
    torch.testing.assert_close(small.features(images.float() / 255.0), feats)
    with pytest.raises(ValueError, match="no images"):
        judge.logits(images[:0])


def test_train_judge_writes_into_a_given_folder(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere"
    record = train_judge(data_dir, out, recipe=TINY)
    assert sorted(p.name for p in out.iterdir()) == ["judge.json", "judge.safetensors"]
    judge = load_judge(out, device="cpu", recipe=TINY)
    assert judge.record == record and judge.model_cfg.hidden == 16
    with pytest.raises(judges.JudgeError, match="trained from another recipe"):
        load_judge(out, device="cpu", recipe=dataclasses.replace(TINY, seed=1))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: _flip_a_byte(f / "judge.safetensors"), "its sha256 differs from judge.json"),
        (lambda f: (f / "judge.safetensors").write_bytes(b"junk"), "its sha256 differs"),
        (lambda f: (f / "judge.safetensors").unlink(), "judge.safetensors is missing"),
        (lambda f: (f / "judge.json").write_text("{"), "judge.json: "),
    ],
    ids=["flipped", "replaced", "missing", "record"],
)
def test_a_damaged_judge_is_reported_and_trained_again(
    data_dir: Path, damage: object, message: str
) -> None:
    first: list[str] = []
    ensure(data_dir, first)
    folder = judge_dir(data_dir, TINY)
    damage(folder)  # type: ignore[operator]
    messages: list[str] = []
    judge = ensure(data_dir, messages)
    assert len(messages) == 2, messages
    assert "is damaged" in messages[0] and message in messages[0], messages[0]
    assert messages[0].endswith("training the judge again")
    assert judge.logits(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(".")) == [
        f".{folder.name}.lock"
    ]  # the damaged folder is gone, not set aside


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # in the last tensor's data: the header still reads
    path.write_bytes(bytes(data))


def test_a_checkpoint_that_is_not_a_judge_is_refused(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "judge"
    train_judge(data_dir, out, recipe=TINY)
    record = json.loads((out / "judge.json").read_text())
    (out / "judge.safetensors").write_bytes(b"not safetensors")
    record["sha256"] = judges.sha256_file(out / "judge.safetensors")
    (out / "judge.json").write_text(json.dumps(record))
    with pytest.raises(judges.JudgeError, match=r"is damaged .*not a readable checkpoint"):
        load_judge(out, device="cpu", recipe=TINY)


def test_an_interrupted_training_leaves_nothing_and_leftovers_are_removed(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = judge_dir(data_dir, TINY)

    def interrupted(*args: object, **kwargs: object) -> dict:
        Path(str(args[1]), "judge.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(judges, "train_judge", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure(data_dir, [])
    assert [p.name for p in folder.parent.iterdir()] == [f".{folder.name}.lock"]
    monkeypatch.undo()

    # What a killed process leaves: a temporary folder, a set-aside old one.
    for leftover in (f".tmp-{folder.name}-x1", f".old-{folder.name}-99"):
        (folder.parent / leftover).mkdir()
        (folder.parent / leftover / "judge.safetensors").write_bytes(b"half")
    messages: list[str] = []
    ensure(data_dir, messages)
    assert "first use" in messages[0]
    assert sorted(p.name for p in folder.parent.iterdir()) == [f".{folder.name}.lock", folder.name]


def test_concurrent_callers_train_the_judge_once(data_dir: Path) -> None:
    messages: list[str] = []
    results = run_together(lambda: ensure(data_dir, messages), count=3)
    assert all(isinstance(r, judges.Judge) for r in results), results
    assert len(messages) == 2 and "first use" in messages[0], messages
    heads = [r.params["head"]["w"] for r in results if isinstance(r, judges.Judge)]
    assert all(torch.equal(head, heads[0]) for head in heads)


def test_a_folder_it_cannot_write_is_named(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(**kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(kwargs["dir"]))

    monkeypatch.setattr(judges.tempfile, "mkdtemp", refused)  # as a read-only folder does
    folder = judge_dir(data_dir, TINY)
    with pytest.raises(
        judges.JudgeError, match=re.escape(f"cannot train the judge in {folder.parent}: ")
    ):
        ensure(data_dir, [])
