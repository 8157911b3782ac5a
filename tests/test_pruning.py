"""Pruning: the cubic schedule, magnitude masks, masks kept through steps, checkpoints and
resume, structured pruning of a GPT, and the `prune` command with its refusals."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from safetensors.torch import load_file

from craft import config, tree
from craft.compress.prune import prune_checkpoint
from craft.errors import ConfigError
from craft.inference import load_for_inference
from craft.models import gpt
from craft.optim import AdamW, Schedule
from craft.tasks import LanguageModeling
from craft.train import init_state, make_train_step
from craft.train.loop import fit, make_setup
from craft.train.pruning import (
    PruneConfig,
    Pruner,
    apply_masks,
    magnitude_mask,
    pruned_names,
    sparsity_at,
)
from tests.conftest import CliRunner, craft_configs
from tests.test_train import TEXT, TINY

PRUNE = """
GPTConfig.n_embd = 32
GPTConfig.dropout = 0.0
PruneConfig.sparsity = 0.75
PruneConfig.start_step = 1
PruneConfig.end_step = 5
PruneConfig.every = 2
"""


@given(
    final=st.floats(0.0, 0.99),
    start=st.integers(0, 50),
    length=st.integers(1, 100),
    steps=st.lists(st.integers(0, 200), min_size=2, max_size=10),
)
def test_the_cubic_schedule_rises_from_zero_to_the_target(final, start, length, steps) -> None:
    end = start + length
    values = [sparsity_at(step, final, start, end) for step in sorted(steps)]
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(values))
    assert sparsity_at(start, final, start, end) == 0.0
    assert sparsity_at(end, final, start, end) == final
    assert sparsity_at(start - 1, final, start, end) == 0.0
    if length % 2 == 0:  # half way the cubic has done 7/8 of its climb
        assert sparsity_at(start + length // 2, final, start, end) == pytest.approx(final * 7 / 8)


@settings(max_examples=50, deadline=None)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 12),
    sparsity=st.floats(0.0, 0.99),
    seed=st.integers(0, 1000),
)
def test_a_magnitude_mask_drops_exactly_the_smallest(rows, cols, sparsity, seed) -> None:
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    mask = magnitude_mask(w, sparsity)
    assert int((~mask).sum()) == round(sparsity * w.numel())
    if mask.any() and (~mask).any():
        assert w[mask].abs().min() >= w[~mask].abs().max()
    assert torch.equal(mask, magnitude_mask(w.clone(), sparsity))


def _tiny_state() -> tuple[gpt.GPTConfig, Any, list[str]]:
    cfg = gpt.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)
    params = gpt.init(cfg, seed=0)
    names = pruned_names(params, ["*.w"])
    return cfg, init_state(params, AdamW(), pruned=names), names


def test_masks_stay_applied_across_steps() -> None:
    cfg, state, names = _tiny_state()
    named = tree.to_dotted(state.masks)
    for mask in named.values():
        mask.copy_(torch.rand(mask.shape, generator=torch.Generator().manual_seed(1)) > 0.5)
    apply_masks(state.params, state.masks)
    step = make_train_step(
        lambda p, b, rng: gpt.loss(p, b, cfg, rng=rng), AdamW(),
        Schedule(peak_lr=1e-2, warmup_steps=0, total_steps=10).for_run(10), compile=False,
    )  # fmt: skip
    data = torch.randint(0, 11, (4, 9), generator=torch.Generator().manual_seed(0))
    before = {n: p.clone() for n, p in tree.to_dotted(state.params).items()}
    for _ in range(3):
        state, _ = step(state, {"inputs": data[:, :-1], "targets": data[:, 1:]})
    params = tree.to_dotted(state.params)
    for name in names:
        assert (params[name][~named[name]] == 0).all(), name
        assert not torch.equal(params[name], before[name]), name  # the kept ones moved
    assert not torch.equal(params["tok.embedding"], before["tok.embedding"])


def test_the_pruner_updates_masks_on_its_schedule_only() -> None:
    _, state, _ = _tiny_state()
    pruner = Pruner(PruneConfig(sparsity=0.5, start_step=2, end_step=6, every=3), 10)
    assert [step for step in range(10) if pruner.due(step)] == [2, 5, 6]
    pruner.after_update(state.params, state.masks, state.ema, 3)  # not due
    assert Pruner.sparsity(state.masks) == 0.0
    pruner.after_update(state.params, state.masks, state.ema, 6)
    assert Pruner.sparsity(state.masks) == pytest.approx(0.5, abs=1e-3)


def test_bad_pruning_settings_name_the_problem() -> None:
    with pytest.raises(ValidationError, match="end_step=1 comes before start_step=3"):
        PruneConfig(sparsity=0.5, start_step=3, end_step=1)
    with pytest.raises(ValidationError, match="less than 1"):
        PruneConfig(sparsity=1.0)
    with pytest.raises(ConfigError, match=r"'\*.nope' selects no weight"):
        pruned_names(gpt.init(_tiny_state()[0], seed=0), ["*.w", "*.nope"])


def _run(folder: Path, text: Path, steps: int, extra: str = PRUNE, **kwargs: Any) -> dict:
    config.parse([], [TINY.format(source=text, steps=steps) + extra])
    configs = craft_configs()
    LanguageModeling.prepare(configs)
    task = LanguageModeling.open(configs)
    summary = fit(make_setup(configs, task, seed=0), folder, **kwargs)
    config.reset()
    return summary


def test_a_pruned_run_saves_its_masks_and_resumes_bit_exactly(
    tmp_path: Path, text_file: Path
) -> None:
    straight = _run(tmp_path / "straight", text_file, 8)
    tensors = load_file(straight["checkpoint"])
    masks = {k.removeprefix("masks."): v for k, v in tensors.items() if k.startswith("masks.")}
    assert "blocks.0.mlp.fc.w" in masks and "tok.embedding" not in masks
    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert kept == pytest.approx(0.25, abs=1e-3)
    for name, mask in masks.items():
        assert (tensors[f"params.{name}"][~mask] == 0).all(), name
    _run(tmp_path / "resumed", text_file, 3)  # stops between two mask updates
    resumed = _run(tmp_path / "resumed", text_file, 8, resume="latest")
    assert resumed["start_step"] == 3
    again = load_file(resumed["checkpoint"])
    assert again.keys() == tensors.keys()
    for name, value in tensors.items():
        assert torch.equal(value, again[name]), name


def _zeroed_like(dense: dict, small: dict, cfg: gpt.GPTConfig, kept_cfg: gpt.GPTConfig) -> dict:
    """The dense params with the neurons and heads `small` dropped set to zero (found by
    matching each kept weight row to its original)."""
    zeroed = copy.deepcopy(dense)
    size = cfg.head_dim
    for block, kept in zip(zeroed["blocks"], small["blocks"], strict=True):
        fc, proj = block["mlp"]["fc"], block["attn"]["proj"]
        rows = {int((fc["w"] - row).abs().sum(1).argmin()) for row in kept["mlp"]["fc"]["w"]}
        for neuron in set(range(cfg.mlp_hidden)) - rows:
            fc["w"][neuron], fc["b"][neuron] = 0.0, 0.0
        qkv = block["attn"]["qkv"]["w"]
        heads = {
            int((qkv - kept["attn"]["qkv"]["w"][h * size]).abs().sum(1).argmin()) // size
            for h in range(kept_cfg.n_head)
        }
        for head in set(range(cfg.n_head)) - heads:
            proj["w"][:, head * size : (head + 1) * size] = 0.0
    return zeroed


@pytest.mark.parametrize(("share", "heads"), [(0.25, 0), (0.5, 1), (0.0, 2)])
def test_a_shrunk_gpt_equals_the_dense_one_with_those_weights_zeroed(share, heads) -> None:
    cfg = gpt.GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=4, n_embd=32)
    params = gpt.init(cfg, seed=0)
    for linear in tree.to_dotted(params):  # biases that are not zero, so they count
        if linear.endswith(".b"):
            tree.to_dotted(params)[linear].normal_(0, 0.1)
    small, small_cfg = gpt.shrink(params, cfg, mlp=share, heads=heads)
    assert small_cfg.mlp_hidden == cfg.mlp_hidden - round(share * cfg.mlp_hidden)
    assert small_cfg.n_head == cfg.n_head - heads
    assert tree.count(small) == gpt.param_count(small_cfg) < gpt.param_count(cfg) or share == 0
    tokens = torch.randint(0, 13, (2, 8), generator=torch.Generator().manual_seed(0))
    zeroed = _zeroed_like(params, small, cfg, small_cfg)
    torch.testing.assert_close(
        gpt.apply(small, tokens, small_cfg), gpt.apply(zeroed, tokens, cfg), rtol=1e-5, atol=1e-6
    )


def test_shrinking_everything_away_is_refused() -> None:
    cfg = gpt.GPTConfig(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=16)
    with pytest.raises(ValueError, match="keep at least one MLP neuron of 64 and one head of 2"):
        gpt.shrink(gpt.init(cfg, seed=0), cfg, heads=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("prune")
    text = folder / "tiny.txt"
    text.write_text(TEXT)
    summary = _run(folder / "run", text, 8, "GPTConfig.n_embd = 32\nGPTConfig.n_head = 4\n")
    return Path(summary["checkpoint"]), text


def test_one_shot_pruning_zeroes_the_smallest_weights(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    source, _ = trained
    path, report = prune_checkpoint(source, tmp_path / "p", 0.5)
    assert report["sparsity_of_pruned"] == pytest.approx(0.5, abs=1e-3)
    before = tree.to_dotted(load_for_inference(source).params)
    after = tree.to_dotted(load_for_inference(path).params)
    fc = "blocks.0.mlp.fc.w"
    assert torch.equal(after[fc] != 0, magnitude_mask(before[fc], 0.5))
    assert torch.equal(after["tok.embedding"], before["tok.embedding"])
    assert (tmp_path / "p" / "tokenizer.json").is_file()


def test_a_structured_pruned_checkpoint_fine_tunes_in_an_ordinary_run(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    source, text = trained
    path, report = prune_checkpoint(source, tmp_path / "s", 0.5, structured=True, heads=1)
    assert report["params_after"] < report["params_before"]
    assert load_for_inference(path).model_cfg.n_head == 3
    gin = "\n".join(report["fine_tune_gin"])
    summary = _run(
        tmp_path / "tuned", text, 2,
        f"GPTConfig.n_embd = 32\n{gin}\nRunConfig.init_from = '{path}'\n",
    )  # fmt: skip
    assert summary["status"] == "finished"
    assert (
        tree.count(load_for_inference(Path(summary["checkpoint"])).params)
        == (report["params_after"])
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sparsity=1.0"], "--sparsity must lie in [0, 1)"),
        (["--sparsity=-0.1"], "--sparsity must lie in [0, 1)"),
        (["--sparsity=half"], "--sparsity must be a number in [0, 1), got 'half'"),
        (["--sparsity=0.5", "--heads=1"], "--heads removes whole attention heads"),
        (["--sparsity=0.5", "--structured", "--heads=-1"], "--heads must be a whole number"),
    ],
)
def test_bad_prune_flags_name_the_problem(
    run_cli: CliRunner, trained: tuple[Path, Path], flags: list[str], message: str
) -> None:
    result = run_cli("prune", f"--checkpoint={trained[0]}", "--output=out", *flags)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_the_cli_prunes_and_refuses_to_resume_the_result(
    run_cli: CliRunner, trained: tuple[Path, Path]
) -> None:
    source, _ = trained
    result = run_cli("prune", f"--checkpoint={source}", "--sparsity=0.25", "--structured",
                     "--output=small")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["fine_tune_gin"] == ["GPTConfig.mlp_ratio = 3.0"]
    resumed = run_cli("run", "--resume=small")
    assert resumed.returncode == 2
    assert "written by `craft.main prune`" in resumed.stderr
    assert "RunConfig.init_from=" in resumed.stderr
