"""Fine-tuning: starting from a checkpoint (init_from) and freezing params by name."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from craft import checkpoint, config, tree
from craft.errors import ConfigError
from craft.models import gpt
from craft.optim import AdamW, Schedule
from craft.optim.masks import select, trainable_names
from craft.tasks import LanguageModeling
from craft.train import init_state, make_train_step
from craft.train.finetune import load_initial_params
from craft.train.hooks import Hook, RunInfo
from craft.train.loop import fit, make_setup
from craft.train.meta import CheckpointMeta
from tests.conftest import craft_configs
from tests.test_train import TINY

CFG = gpt.GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16)
CONSTANT = Schedule(kind="constant", peak_lr=1e-2)


def batch(seed: int) -> dict[str, torch.Tensor]:
    x = torch.randint(0, 40, (4, 17), generator=torch.Generator().manual_seed(seed))
    return {"inputs": x[:, :-1].clone(), "targets": x[:, 1:].clone()}


def save_model(directory: Path, cfg: gpt.GPTConfig, params: Any, step: int = 3) -> Path:
    """A checkpoint as a run writes one (record validated by the reader's schema)."""
    record = CheckpointMeta.model_validate(
        {"step": step, "model": "gpt", "model_config": cfg.model_dump(mode="json"), "configs": {}}
    ).as_dict()
    state = init_state(params, AdamW())._asdict()
    return checkpoint.save(directory, state, step, record)


class Capture(Hook):
    """Keeps a copy of the state the run starts from."""

    def on_start(self, run: RunInfo) -> None:
        assert run.read_state is not None
        state = run.read_state()
        self.step = int(state.step)
        self.params = tree.tree_map(torch.clone, state.params)
        self.opt_state = tree.tree_map(torch.clone, state.opt_state)


def run_tiny(
    run_dir: Path,
    text_file: Path,
    steps: int,
    extra: str = "",
    *,
    samples: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """A tiny character-level run in this process (as tests/test_train.py runs them);
    `samples`: with the task's text samples every 4 steps, as the CLI runs it."""
    config.parse([], [TINY.format(source=text_file, steps=steps) + extra])
    configs = craft_configs()
    LanguageModeling.prepare(configs)
    task = LanguageModeling.open(configs)
    setup = make_setup(configs, task, seed=0)
    hooks = [*kwargs.pop("hooks", []), *(task.previews(None, 4) if samples else [])]
    return fit(setup, run_dir, hooks=hooks, **kwargs)


def test_init_from_starts_from_the_checkpoint_at_step_0_with_a_fresh_optimizer(
    tmp_path: Path, text_file: Path
) -> None:
    base = run_tiny(tmp_path / "base", text_file, steps=4)
    source = Path(base["checkpoint"])
    capture = Capture()
    tuned = run_tiny(
        tmp_path / "tuned", text_file, steps=2, extra=f"RunConfig.init_from = '{source}'\n",
        hooks=[capture],
    )  # fmt: skip
    stored = {k.removeprefix("params."): v for k, v in load_file(source).items()
              if k.startswith("params.")}  # fmt: skip
    assert capture.step == 0 and tuned["start_step"] == 0 and tuned["steps"] == 2
    for name, value in tree.to_dotted(capture.params).items():
        assert torch.equal(value, stored[name]), name
    assert all(not leaf.any() for leaf in tree.leaves(capture.opt_state))  # fresh AdamW
    record = checkpoint.read_meta(Path(tuned["checkpoint"]))
    assert record["configs"]["RunConfig"]["init_from"] == str(source)  # in the run's record


def test_init_from_a_run_folder_takes_its_newest_checkpoint(tmp_path: Path) -> None:
    params = gpt.init(CFG, seed=1)
    save_model(tmp_path / "run/checkpoints", CFG, gpt.init(CFG, seed=2), step=1)
    save_model(tmp_path / "run/checkpoints", CFG, params, step=2)
    loaded = load_initial_params(tmp_path / "run", gpt.SPEC, CFG)
    assert all(
        torch.equal(a, b) for a, b in zip(tree.leaves(loaded), tree.leaves(params), strict=True)
    )


def test_init_from_ignores_fields_that_shape_no_param(tmp_path: Path) -> None:
    path = save_model(tmp_path, CFG, gpt.init(CFG, seed=0))
    other = CFG.model_copy(update={"dropout": 0.2, "n_head": 4})
    with pytest.warns(
        UserWarning, match=r"the run uses its own: n_head: 2 -> 4; dropout: 0\.0 -> 0\.2"
    ):
        loaded = load_initial_params(path, gpt.SPEC, other)
    assert tree.count(loaded) == gpt.param_count(CFG)


def test_init_from_a_different_shape_names_the_fields_and_params(tmp_path: Path) -> None:
    path = save_model(tmp_path, CFG, gpt.init(CFG, seed=0))
    wider = CFG.model_copy(update={"n_embd": 32, "vocab_size": 50, "dropout": 0.1})
    with pytest.raises(ConfigError) as error:
        load_initial_params(path, gpt.SPEC, wider)
    message = str(error.value)
    assert "does not fit the configured model" in message
    assert "n_embd: checkpoint 16, this run 32" in message
    assert "vocab_size: checkpoint 40, this run 50" in message
    assert "tok.embedding: checkpoint [40, 16], this run [50, 32]" in message
    assert "dropout: checkpoint 0.0, this run 0.1 (shapes no param)" in message


def test_init_from_an_untied_head_lists_the_extra_param(tmp_path: Path) -> None:
    path = save_model(tmp_path, CFG, gpt.init(CFG, seed=0))
    with pytest.raises(ConfigError, match=r"head\.w: checkpoint none, this run \[40, 16\]"):
        load_initial_params(path, gpt.SPEC, CFG.model_copy(update={"tie_embeddings": False}))


def frozen_run(patterns: list[str], steps: int = 3, *, compile: bool = False) -> tuple:
    params = gpt.init(CFG, seed=0)
    names = trainable_names(params, patterns)
    before = tree.tree_map(torch.clone, params)
    optimizer = AdamW(weight_decay=0.1)
    state = init_state(params, optimizer, trainable=names)
    step = make_train_step(
        functools.partial(gpt.loss, cfg=CFG), optimizer, CONSTANT, clip_norm=1.0,
        compile=compile, trainable=names,
    )  # fmt: skip
    for i in range(steps):
        state, _ = step(state, batch(i))
    return before, state, names


def test_frozen_params_stay_bit_identical_and_have_no_optimizer_state() -> None:
    before, state, names = frozen_run(["blocks.1.*", "ln_f.*"])
    assert names is not None and names[0] == "blocks.1.ln1.scale" and names[-1] == "ln_f.bias"
    for name, value in tree.to_dotted(state.params).items():
        assert value.requires_grad is False  # outside the step, nothing records a graph
        unchanged = torch.equal(value, tree.to_dotted(before)[name])
        assert unchanged == (name not in names), name
    opt_names = list(tree.to_dotted(state.opt_state))
    assert opt_names == ["step", *(f"mu.{n}" for n in names), *(f"nu.{n}" for n in names)]
    assert tree.count(state.opt_state["mu"]) == tree.count(select(state.params, names))


def test_a_pattern_that_matches_nothing_is_named() -> None:
    with pytest.raises(ConfigError, match=r"'blocks\.7\.\*' matches no parameter"):
        trainable_names(gpt.init(CFG, seed=0), ["ln_f.*", "blocks.7.*"])
    with pytest.raises(ConfigError, match="nothing would train"):
        trainable_names(gpt.init(CFG, seed=0), [])


def test_the_config_is_checked_before_the_run(tmp_path: Path, text_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"TrainConfig\.trainable: 'head\.\*' matches no"):
        run_tiny(tmp_path / "run", text_file, 2, "TrainConfig.trainable = ['head.*']\n")


def test_a_frozen_fine_tuning_run_resumes_bit_exactly(tmp_path: Path, text_file: Path) -> None:
    source = Path(run_tiny(tmp_path / "base", text_file, steps=2)["checkpoint"])
    copy = tmp_path / "source.safetensors"
    copy.write_bytes(source.read_bytes())
    tuning = (
        f"RunConfig.init_from = '{copy}'\nTrainConfig.trainable = ['blocks.0.mlp.*', 'ln_f.*']\n"
    )
    straight = run_tiny(tmp_path / "straight", text_file, steps=8, extra=tuning)
    run_tiny(tmp_path / "resumed", text_file, steps=4, extra=tuning)
    copy.unlink()  # a resume reads its own checkpoint, not init_from
    resumed = run_tiny(tmp_path / "resumed", text_file, 8, tuning, resume=tmp_path / "resumed")
    assert resumed["start_step"] == 4
    a, b = load_file(straight["checkpoint"]), load_file(resumed["checkpoint"])
    assert a.keys() == b.keys()
    assert not any(k.startswith("opt_state.mu.tok") for k in a)  # frozen: no state
    for name in a:
        assert torch.equal(a[name], b[name]), name
    start = load_file(source)
    assert torch.equal(a["params.tok.embedding"], start["params.tok.embedding"])
    assert not torch.equal(a["params.ln_f.scale"], start["params.ln_f.scale"])
