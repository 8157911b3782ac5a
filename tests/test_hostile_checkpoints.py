"""Checkpoints are untrusted input: a hostile or broken record gets one clear error, reads
nothing outside the checkpoint's folder and allocates nothing the file does not hold."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from craft import checkpoint
from craft.checkpoint import CheckpointError
from craft.data.config import DataConfig
from craft.data.prepare import prepare
from craft.main import main
from craft.models import gpt
from tests.test_train import run_in_process

Edit = Callable[[dict[str, Any]], Any]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny char-level GPT run (4 steps) and its prepared data, shared by the module."""
    root = tmp_path_factory.mktemp("hostile")
    text = root / "tiny.txt"
    text.write_text("".join(f"SPEAKER_{i % 5}: line {i} of the play.\n" for i in range(300)))
    run_in_process(root / "run", text, steps=4)
    return root


def forged(trained: Path, tmp_path: Path, edit: Edit) -> Path:
    """A copy of the run's checkpoint (with its tokenizer) whose record `edit` rewrote."""
    source = trained / "run/checkpoints/step-00000004.safetensors"
    folder = tmp_path / "forged"
    folder.mkdir(parents=True)
    shutil.copy2(trained / "run/checkpoints/tokenizer.json", folder / "tokenizer.json")
    with safe_open(str(source), framework="pt") as handle:
        record = json.loads(handle.metadata()["craft"])
    new = edit(record)
    target = folder / source.name
    save_file(load_file(source), str(target), metadata={"craft": new if isinstance(new, str)
                                                        else json.dumps(new)})  # fmt: skip
    return target


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def _set(path: str, value: Any) -> Edit:
    def edit(record: dict[str, Any]) -> dict[str, Any]:
        *parents, last = path.split(".")
        node = record
        for key in parents:
            node = node[key]
        node[last] = value
        return record

    return edit


def _drop(key: str) -> Edit:
    return lambda record: {k: v for k, v in record.items() if k != key}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: "{not json", "its Craft metadata is not JSON"),
        (lambda r: [1, 2], "its Craft metadata is a JSON list, not an object"),
        (_drop("model_config"), "its Craft metadata is malformed: model_config: Field required"),
        (_drop("configs"), "its Craft metadata is malformed: configs: Field required"),
        (_set("step", "many"), "step: Input should be a valid integer"),
        (_set("configs", {"DataConfig": 3}), "configs.DataConfig: Input should be a valid dict"),
        (_set("model", "gpt9"), "names an unknown model 'gpt9'"),
        (
            _set("model_config.n_layer", "deep"),
            "its model_config is not a valid GPTConfig: n_layer: Input should be a valid integer",
        ),
        (_set("task", "poetry"), "names an unknown task 'poetry'"),
        (
            _set("configs.DataConfig.split_ratios", "half"),
            "its metadata does not describe a 'lm' run",
        ),
        # A model far larger than the file: refused by counting, before any allocation (a
        # vocabulary of 1e9 would otherwise ask for 16 TB, 48 layers of width 1024 for 2.7 GB).
        (_set("model_config.vocab_size", 10**9), "but the file holds"),
        (_set("model_config.n_layer", 48), "but the file holds"),
        (_set("model_config.block_size", 8), "but the file holds"),
    ],
)
def test_malformed_records_get_one_clear_error(
    trained: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    edit: Edit,
    message: str,
) -> None:
    path = forged(trained, tmp_path, edit)
    args = ["evaluate", f"--checkpoint={path}", f"--data_dir={trained / 'tiny.txt.prepared'}"]
    code, out, err = run_main(args, capsys)
    assert code in (1, 2) and out == ""
    assert err.startswith("craft: error: ") and str(path) in err
    assert message in err and "Traceback" not in err


def test_the_untouched_checkpoint_evaluates(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The control for the cases above: the forging itself changes nothing."""
    path = forged(trained, tmp_path, lambda record: record)
    args = ["evaluate", f"--checkpoint={path}", f"--data_dir={trained / 'tiny.txt.prepared'}"]
    code, out, err = run_main(args, capsys)
    assert code == 0, err
    assert json.loads(out)["loss"] > 0


def test_shapes_are_checked_on_the_meta_device(trained: Path) -> None:
    """A config of the same size but other shapes is named tensor by tensor, and the model it
    claims is never built in memory."""
    path = trained / "run/checkpoints/step-00000004.safetensors"
    cfg = gpt.GPTConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16)
    with torch.device("meta"):
        like = gpt.init(cfg, seed=0)
    with pytest.raises(CheckpointError, match=r"params.tok.embedding: file has F32 \[\d+, 16\]"):
        checkpoint.load(path, like=like, prefix="params")


@pytest.mark.parametrize("name", ["../../secret.json", "/etc/passwd", "sub/tokenizer.json", ""])
def test_the_tokenizer_must_be_a_plain_name_beside_the_checkpoint(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    path = forged(trained, tmp_path, _set("task_meta.tokenizer", name))
    code, out, err = run_main(["generate", f"--checkpoint={path}", "--max_new_tokens=3"], capsys)
    assert code == 1 and out == ""
    assert f"names no plain tokenizer file (got {name!r})" in err


def test_stored_data_paths_never_redirect_evaluation(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A record pointing DataConfig.prepared_dir at another, valid folder changes nothing:
    without --data_dir, evaluate reads the data under data/ of the working folder."""
    work = tmp_path / "work"
    honest = work / "data/prepared/tiny-char"
    shutil.copytree(trained / "tiny.txt.prepared", honest)
    decoy = tmp_path / "decoy.prepared"  # consistent: its own val.bin and checksum
    shutil.copytree(honest, decoy)
    zeros = bytes(len((decoy / "val.bin").read_bytes()))
    (decoy / "val.bin").write_bytes(zeros)
    meta = json.loads((decoy / "meta.json").read_text())
    meta["sha256"]["val"] = hashlib.sha256(zeros).hexdigest()
    (decoy / "meta.json").write_text(json.dumps(meta))
    plain = forged(trained, tmp_path / "a", lambda record: record)
    hostile = forged(trained, tmp_path / "b", _set("configs.DataConfig.prepared_dir", str(decoy)))
    monkeypatch.chdir(work)
    losses = {}
    for name, path, flags in [
        ("plain", plain, []),
        ("hostile", hostile, []),
        ("decoy", plain, [f"--data_dir={decoy}"]),  # what following the record would score
    ]:
        code, out, err = run_main(["evaluate", f"--checkpoint={path}", *flags], capsys)
        assert code == 0, err
        losses[name] = json.loads(out)["loss"]
    assert losses["hostile"] == losses["plain"] != losses["decoy"]


def test_a_tokenizer_of_another_vocabulary_is_refused(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = forged(trained, tmp_path, lambda record: record)
    chars = [chr(c) for c in range(32, 32 + 200)]  # more symbols than the model knows
    (path.parent / "tokenizer.json").write_text(json.dumps({"kind": "char", "chars": chars}))
    code, out, err = run_main(["generate", f"--checkpoint={path}", "--prompt=a"], capsys)
    assert code == 1 and out == ""
    assert "has 200 symbols, more than the" in err and "of the model in step-00000004" in err


def test_a_rotary_model_claiming_a_huge_context_generates_in_small_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """block_size shapes no param of a rotary GPT, so the record may claim 1e9; generation
    sizes its cache by what it will fill, not by that claim."""
    cfg = gpt.GPTConfig(vocab_size=40, block_size=32, n_layer=1, n_head=2, n_embd=16,
                        positions="rotary")  # fmt: skip
    source = tmp_path / "model"
    source.mkdir()
    (source / "tokenizer.json").write_text(
        json.dumps({"kind": "char", "chars": [chr(c) for c in range(60, 100)]})
    )
    claimed = {**cfg.model_dump(mode="json"), "block_size": 10**9}
    record = {"step": 0, "model": "gpt", "configs": {}, "model_config": claimed,
              "task_meta": {"tokenizer": "tokenizer.json"}}  # fmt: skip
    path = checkpoint.save(source, {"params": gpt.init(cfg, seed=0)}, 0, record)
    code, out, err = run_main(
        ["generate", f"--checkpoint={path}", "--prompt=AB", "--max_new_tokens=5"], capsys
    )
    assert code == 0, err
    assert out.startswith("AB") and len(out.strip()) == 7


def test_evaluating_on_other_data_warns(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same text split differently is other data: scored, with a warning naming it."""
    other = tmp_path / "other"
    prepare(trained / "tiny.txt", other, DataConfig(split_ratios=(0.8, 0.1, 0.1)))
    path = trained / "run/checkpoints/step-00000004.safetensors"
    code, out, err = run_main(["evaluate", f"--checkpoint={path}", f"--data_dir={other}"], capsys)
    assert code == 0 and json.loads(out)["loss"] > 0
    assert "not the data step-00000004.safetensors was trained on" in err
    code, _, err = run_main(
        ["evaluate", f"--checkpoint={path}", f"--data_dir={trained / 'tiny.txt.prepared'}"], capsys
    )
    assert code == 0 and "not the data" not in err
