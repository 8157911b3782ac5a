"""Checkpoints: round trips, atomic writes, pruning and the errors users see."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from craft import checkpoint, tree
from craft.checkpoint import CheckpointError
from craft.models import gpt
from craft.optim import AdamW
from craft.train import init_state

CFG = gpt.GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8)


def state_dict(seed: int = 0, cfg: gpt.GPTConfig = CFG) -> dict:
    return init_state(gpt.init(cfg, seed=seed), AdamW(), seed=seed)._asdict()


def same(a: object, b: object) -> bool:
    return all(
        x.dtype == y.dtype and torch.equal(x, y)
        for x, y in zip(tree.leaves(a), tree.leaves(b), strict=True)
    )


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), step=st.integers(0, 10**7))
def test_save_load_round_trip(
    tmp_path_factory: pytest.TempPathFactory, seed: int, step: int
) -> None:
    directory = tmp_path_factory.mktemp("ckpt")
    original = state_dict(seed)
    path = checkpoint.save(directory, original, step, {"step": step, "note": "ünïcode"})
    assert path.name == f"step-{step:08d}.safetensors"
    loaded, meta = checkpoint.load(path, like=state_dict(seed + 1))
    assert same(loaded, original)
    assert meta == {"step": step, "note": "ünïcode"}


def test_params_only_load(tmp_path: Path) -> None:
    original = state_dict(3)
    path = checkpoint.save(tmp_path, original, 1, {})
    params, _ = checkpoint.load(path, like=gpt.init(CFG, seed=0), prefix="params")
    assert same(params, original["params"])


def test_a_crash_before_the_rename_leaves_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = checkpoint.save(tmp_path, state_dict(0), 10, {"step": 10})
    before = first.read_bytes()

    def crash(src: object, dst: object) -> None:
        raise KeyboardInterrupt  # killed between write and rename

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, state_dict(1), 20, {"step": 20})
    monkeypatch.undo()
    assert checkpoint.list_checkpoints(tmp_path) == [first]  # the .tmp file is never listed
    assert checkpoint.resolve("latest", tmp_path) == first
    assert first.read_bytes() == before


def test_prune_keeps_the_newest_and_the_best(tmp_path: Path) -> None:
    losses = {100: 2.0, 200: 1.2, 300: 1.5, 400: 1.6, 500: None}
    for step, loss in losses.items():
        checkpoint.save(tmp_path, state_dict(0), step, {"val_loss": loss})
    removed = checkpoint.prune(tmp_path, keep_last=2)
    kept = [p.name for p in checkpoint.list_checkpoints(tmp_path)]
    assert kept == [
        "step-00000200.safetensors",
        "step-00000400.safetensors",
        "step-00000500.safetensors",
    ]
    assert sorted(p.name for p in removed) == [
        "step-00000100.safetensors",
        "step-00000300.safetensors",
    ]


def test_resolve_latest_and_folders(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for step in (5, 50):
        checkpoint.save(run / "checkpoints", state_dict(0), step, {})
    newest = run / "checkpoints" / "step-00000050.safetensors"
    assert checkpoint.resolve("latest", run / "checkpoints") == newest
    assert checkpoint.resolve(run) == newest
    assert checkpoint.resolve(newest) == newest
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        checkpoint.resolve("latest", tmp_path / "empty")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        checkpoint.resolve(tmp_path / "nope.safetensors")


def test_truncated_file_is_named(tmp_path: Path) -> None:
    path = checkpoint.save(tmp_path, state_dict(0), 1, {})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(
        CheckpointError,
        match=r"step-00000001.safetensors is not a readable checkpoint \(truncated or corrupted",
    ):
        checkpoint.load(path, like=state_dict(0))


def test_garbage_and_foreign_files_are_named(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match=r"garbage\.safetensors is not a readable checkpoint"):
        checkpoint.read_meta(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="without Craft metadata"):
        checkpoint.read_meta(foreign)


def test_missing_tensor_and_wrong_shape_are_named(tmp_path: Path) -> None:
    path = checkpoint.save(tmp_path, state_dict(0), 1, {})
    wider = CFG.model_copy(update={"n_embd": 16})
    with pytest.raises(CheckpointError) as error:
        checkpoint.load(path, like=state_dict(0, wider))
    message = str(error.value)
    assert "does not fit the configured model" in message
    assert (
        "params.tok.embedding: file has F32 [20, 8], the config expects float32 [20, 16]" in message
    )
    untied = CFG.model_copy(update={"tie_embeddings": False})
    with pytest.raises(CheckpointError, match=r"missing tensors: params.head.w"):
        checkpoint.load(path, like=state_dict(0, untied))


def test_wrong_dtype_is_named(tmp_path: Path) -> None:
    original = state_dict(0)
    path = checkpoint.save(tmp_path, original, 1, {})
    like = {**original, "step": torch.zeros((), dtype=torch.int32)}
    with pytest.raises(
        CheckpointError, match=r"step: file has I64 \[\], the config expects int32 \[\]"
    ):
        checkpoint.load(path, like=like)


def test_loading_never_unpickles(tmp_path: Path) -> None:
    """A pickle renamed to .safetensors is refused, not executed."""
    evil = tmp_path / "step-00000001.safetensors"
    torch.save({"x": torch.zeros(1)}, evil)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(evil, like=state_dict(0))
