"""The EMA of the params: it equals a reference computed by hand (eager and compiled, with
accumulation, frozen params, ZeRO-1 over one rank, fp16 skips), lives in checkpoints as
`ema.*`, resumes bit-exactly, and is what evaluation, hooks and inference use."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from safetensors.torch import load_file

from craft import checkpoint, config, tree
from craft.checkpoint import CheckpointError
from craft.errors import ConfigError
from craft.inference import load_for_inference
from craft.models import gpt
from craft.optim import SGD, AdamW, Schedule
from craft.optim.masks import trainable_names
from craft.resume import config_changes
from craft.tasks import LanguageModeling
from craft.train import init_state, make_train_step, to_device
from craft.train.config import TrainConfig
from craft.train.evaluate import evaluate
from craft.train.hooks import Hook, RunInfo
from craft.train.loop import fit, make_setup
from craft.train.meta import CheckpointMeta
from craft.train.sharded import OptimizerShards
from craft.train.weights import load_model
from craft.tree import Params
from tests.conftest import craft_configs
from tests.test_train import TINY

CFG = gpt.GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32)
GPT_LOSS = functools.partial(gpt.loss, cfg=CFG)
CONSTANT = Schedule(kind="constant", peak_lr=1e-2)


def gpt_batch(seed: int, size: int = 4) -> dict[str, torch.Tensor]:
    x = torch.randint(0, CFG.vocab(), (size, 17), generator=torch.Generator().manual_seed(seed))
    return {"inputs": x[:, :-1].clone(), "targets": x[:, 1:].clone()}


def regression_loss(
    params: Params, batch: dict[str, torch.Tensor], *, rng: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A linear regression: the tiniest model, which also compiles quickly."""
    err = batch["x"] @ params["w"] + params["b"] - batch["y"]
    return (err**2).mean(), {"weight": torch.tensor(batch["x"].shape[0])}


def regression_batch(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(8, 3, generator=generator), "y": torch.randn(8, generator=generator)}


def regression_params() -> Params:
    generator = torch.Generator().manual_seed(0)
    return {"w": torch.randn(3, generator=generator), "b": torch.zeros(())}


def reference_ema(history: list[dict[str, torch.Tensor]], decay: float, warmup: bool) -> dict:
    """The EMA by hand, in float64, from the trained params before the first step and after
    each one: e_n = d_n e_(n-1) + (1 - d_n) p_n, d_n = min(decay, (1 + n) / (10 + n))."""
    ema = {name: value.double() for name, value in history[0].items()}
    for n, params in enumerate(history[1:], start=1):
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        ema = {name: d * ema[name] + (1 - d) * params[name].double() for name in ema}
    return ema


def snapshot(params: Params, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    named = tree.to_dotted(params)
    return {name: named[name].clone() for name in names or named}


def train_and_record(
    loss: Any,
    params: Params,
    batches: list[dict[str, torch.Tensor]],
    *,
    decay: float,
    warmup: bool = True,
    optimizer: AdamW | SGD | None = None,
    trainable: list[str] | None = None,
    **options: Any,
) -> tuple[Any, list[dict[str, torch.Tensor]]]:
    """Steps over `batches`; the final state and the trained params before and after each."""
    optimizer = optimizer or AdamW(eps=1e-5)
    state = init_state(params, optimizer, seed=0, trainable=trainable, ema=True)
    step = make_train_step(
        loss, optimizer, CONSTANT, ema_decay=decay, ema_warmup=warmup, trainable=trainable,
        **options,
    )  # fmt: skip
    history = [snapshot(state.params, trainable)]
    for data in batches:
        state, _ = step(state, data)
        history.append(snapshot(state.params, trainable))
    return state, history


def assert_ema_is(state: Any, expected: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    got = tree.to_dotted(state.ema)
    assert list(got) == list(expected)  # the trained params' names, in their order
    for name, value in expected.items():
        assert got[name].dtype == torch.float32, name
        torch.testing.assert_close(got[name].double(), value, atol=atol, rtol=1e-6)


@settings(max_examples=12, deadline=None)
@given(
    decay=st.floats(0.01, 0.9999),
    steps=st.integers(1, 6),
    warmup=st.booleans(),
    accum=st.sampled_from([1, 2]),
)
def test_ema_equals_a_reference_computation(
    decay: float, steps: int, warmup: bool, accum: int
) -> None:
    """For any decay in (0, 1), number of steps, warm-up or not and accumulation."""
    batches = [regression_batch(i) for i in range(steps)]
    state, history = train_and_record(
        regression_loss, regression_params(), batches, decay=decay, warmup=warmup,
        accum_steps=accum, compile=False,
    )  # fmt: skip
    assert_ema_is(state, reference_ema(history, decay, warmup))


def test_warmup_formula_of_the_first_steps() -> None:
    """The first update keeps 2/11 of the initial params, the second 3/12 of the average
    (below ema_decay = 0.5, which then caps it), and without warm-up 0.5 from the start."""
    batches = [regression_batch(i) for i in range(3)]
    state, history = train_and_record(
        regression_loss, regression_params(), batches[:1], decay=0.5, compile=False
    )
    w0, w1 = history[0]["w"].double(), history[1]["w"].double()
    torch.testing.assert_close(state.ema["w"].double(), 2 / 11 * w0 + 9 / 11 * w1)
    state, history = train_and_record(
        regression_loss, regression_params(), batches[:2], decay=0.5, compile=False
    )
    w2 = history[2]["w"].double()
    first = 2 / 11 * w0 + 9 / 11 * w1
    torch.testing.assert_close(state.ema["w"].double(), 3 / 12 * first + 9 / 12 * w2)
    state, history = train_and_record(
        regression_loss, regression_params(), batches, decay=0.5, warmup=False, compile=False
    )
    assert_ema_is(state, reference_ema(history, 0.5, warmup=False))


def test_gpt_ema_with_accumulation_and_frozen_params() -> None:
    """The EMA holds the trained params only, under their names, and follows them; the frozen
    ones are in no EMA (evaluation uses them as they are)."""
    names = trainable_names(gpt.init(CFG, seed=0), ["blocks.1.*", "tok.*"])
    assert names is not None
    batches = [gpt_batch(i, size=4) for i in range(3)]
    state, history = train_and_record(
        GPT_LOSS, gpt.init(CFG, seed=0), batches, decay=0.8, trainable=list(names),
        accum_steps=2, clip_norm=1.0, compile=False,
    )  # fmt: skip
    assert list(tree.to_dotted(state.ema)) == list(names)
    assert_ema_is(state, reference_ema(history, 0.8, warmup=True))


def test_compiled_ema_equals_the_reference_and_does_not_recompile() -> None:
    """Inside the compiled update, the decay comes from the step tensor: the graphs built in
    the first step serve the next ones."""
    counters = torch._dynamo.utils.counters["stats"]
    state = init_state(regression_params(), AdamW(eps=1e-5), ema=True)
    step = make_train_step(
        regression_loss, AdamW(eps=1e-5), CONSTANT, clip_norm=1.0, ema_decay=0.9, compile=True
    )
    history = [snapshot(state.params)]
    graphs = []
    for i in range(4):
        state, _ = step(state, regression_batch(i))
        history.append(snapshot(state.params))
        graphs.append(counters["unique_graphs"])
    assert graphs[1:] == [graphs[0]] * 3, "a step after the first recompiled"
    assert_ema_is(state, reference_ema(history, 0.9, warmup=True), atol=1e-5)


@pytest.mark.slow
def test_cuda_graph_mode_ema_equals_the_eager_one() -> None:
    """ "reduce-overhead" marks the EMA static like the params (it is updated in place); on a
    CPU inductor replays no graphs, so this checks the bookkeeping, and a GPU run the replays."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batches = [{k: v.to(device) for k, v in regression_batch(i).items()} for i in range(4)]
    states = {}
    for mode in ("eager", "reduce-overhead"):
        state = to_device(init_state(regression_params(), AdamW(eps=1e-5), ema=True), device)
        step = make_train_step(
            regression_loss, AdamW(eps=1e-5), CONSTANT, ema_decay=0.9, compile=mode != "eager",
            compile_mode="default" if mode == "eager" else mode,  # type: ignore[arg-type]
        )  # fmt: skip
        for data in batches:
            state, _ = step(state, data)
        states[mode] = state
    for name, value in tree.to_dotted(states["eager"].ema).items():
        got = tree.to_dotted(states["reduce-overhead"].ema)[name]
        torch.testing.assert_close(got, value, atol=1e-5, rtol=1e-5)


def poisoned_loss(
    params: Params, batch: dict[str, torch.Tensor], *, rng: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A linear model whose loss overflows when batch["poison"] is set (as in test_step)."""
    value = ((batch["inputs"].float() @ params["w"]) ** 2).mean() * (
        1.0 + batch["poison"].max() * 1e36
    )
    return value, {"weight": torch.tensor(batch["inputs"].shape[0])}


@pytest.mark.parametrize("sharded", [False, True], ids=["replicated", "sharded"])
def test_fp16_skipped_step_leaves_the_ema_unchanged(sharded: bool) -> None:
    optimizer = AdamW()
    state = init_state(
        {"w": torch.randn(4, 2, generator=torch.Generator().manual_seed(0))}, optimizer,
        init_loss_scale=256.0, ema=True,
    )  # fmt: skip
    shards = OptimizerShards(state.params, 0, 1) if sharded else None
    if shards is not None:
        state = shards.shard_state(state)
    step = make_train_step(
        poisoned_loss, optimizer, CONSTANT, precision="fp16", compile=False, shards=shards,
        ema_decay=0.5,
    )  # fmt: skip
    clean = {"inputs": torch.randn(3, 4), "poison": torch.zeros(3)}
    poisoned = {"inputs": torch.randn(3, 4), "poison": torch.ones(3)}
    before = state.ema["w"].clone()
    state, metrics = step(state, poisoned)
    assert metrics["skipped"].item() == 1
    assert torch.equal(state.ema["w"], before)
    params_before = state.params["w"].clone()
    state, metrics = step(state, clean)  # n = 2: the skipped step counts
    assert metrics["skipped"].item() == 0
    expected = 3 / 12 * before.double() + 9 / 12 * state.params["w"].double()
    assert not torch.equal(state.params["w"], params_before)
    torch.testing.assert_close(state.ema["w"].double(), expected)


def test_one_rank_sharded_ema_equals_the_plain_one() -> None:
    """ZeRO-1 keeps the EMA whole on every rank and moves it after the params are gathered."""
    batches = [gpt_batch(i) for i in range(3)]
    plain, history = train_and_record(
        GPT_LOSS, gpt.init(CFG, seed=0), batches, decay=0.9, compile=False
    )
    optimizer = AdamW(eps=1e-5)
    state = init_state(gpt.init(CFG, seed=0), optimizer, seed=0, ema=True)
    shards = OptimizerShards(state.params, 0, 1)
    state = shards.shard_state(state)
    step = make_train_step(
        GPT_LOSS, optimizer, CONSTANT, compile=False, shards=shards, ema_decay=0.9
    )
    for data in batches:
        state, _ = step(state, data)
    assert_ema_is(state, reference_ema(history, 0.9, warmup=True))
    assert_ema_is(state, {k: v.double() for k, v in tree.to_dotted(plain.ema).items()})
    whole = shards.full_state(state)
    assert whole.ema is state.ema  # checkpoints hold it as it is


def test_ema_off_leaves_an_empty_tree_and_to_device_keeps_it() -> None:
    state = init_state(gpt.init(CFG, seed=0), SGD())
    assert state.ema == {}
    assert to_device(state, "cpu").ema == {}
    with_ema = to_device(init_state(gpt.init(CFG, seed=0), SGD(), ema=True), "cpu")
    assert tree.to_dotted(with_ema.ema).keys() == tree.to_dotted(with_ema.params).keys()
    for ema, param in zip(tree.leaves(with_ema.ema), tree.leaves(with_ema.params), strict=True):
        assert torch.equal(ema, param)
        assert ema.untyped_storage().data_ptr() != param.untyped_storage().data_ptr()


def test_bad_decays_and_mismatched_states_are_refused() -> None:
    for bad in (0.0, 1.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValidationError, match=r"ema_decay must be in \(0, 1\)"):
            TrainConfig(ema_decay=bad)
        with pytest.raises(ValueError, match=r"ema_decay must be in \(0, 1\)"):
            make_train_step(regression_loss, SGD(), CONSTANT, ema_decay=bad)
    config.parse([], ["TrainConfig.ema_decay = 1.0"])
    with pytest.raises(ConfigError, match=r"ema_decay must be in \(0, 1\), e\.g\. 0\.999"):
        config.build(TrainConfig)
    step = make_train_step(regression_loss, SGD(), CONSTANT, ema_decay=0.9, compile=False)
    with pytest.raises(ValueError, match="the state holds none: build it with"):
        step(init_state(regression_params(), SGD()), regression_batch(0))
    plain_step = make_train_step(regression_loss, SGD(), CONSTANT, compile=False)
    with pytest.raises(ValueError, match="the step has no ema_decay"):
        plain_step(init_state(regression_params(), SGD(), ema=True), regression_batch(0))
    frozen = make_train_step(
        regression_loss, SGD(), CONSTANT, ema_decay=0.9, compile=False, trainable=["w"]
    )
    with pytest.raises(ValueError, match="does not hold the trained params"):
        frozen(init_state(regression_params(), SGD(), ema=True), regression_batch(0))


def test_changing_the_ema_on_resume_is_a_binding_change() -> None:
    binding, free = config_changes(
        {"TrainConfig": {"ema_decay": None, "ema_warmup": True, "eval_every": 4}},
        {"TrainConfig": {"ema_decay": 0.999, "ema_warmup": False, "eval_every": 8}},
    )
    assert binding == [
        "TrainConfig.ema_decay: None -> 0.999",
        "TrainConfig.ema_warmup: True -> False",
    ]
    assert free == ["TrainConfig.eval_every: 4 -> 8"]


# ---- Through fit and the checkpoints ------------------------------------------------------

EMA_RUN = (
    "TrainConfig.ema_decay = 0.9\nTrainConfig.checkpoint_every = 2\nTrainConfig.eval_every = 2\n"
)


class LastParams(Hook):
    """What hooks see of the params at the end of the run (previews sample from these)."""

    def on_end(self, run: RunInfo, summary: dict[str, Any]) -> None:
        assert run.read_state is not None
        state = run.read_state()
        self.params = snapshot(state.params)
        self.ema = state.ema


def run_tiny(
    run_dir: Path, text_file: Path, steps: int, extra: str = "", **kwargs: Any
) -> tuple[dict[str, Any], Any]:
    """A tiny character-level run in this process (as tests/test_train.py runs them)."""
    config.parse([], [TINY.format(source=text_file, steps=steps) + extra])
    configs = craft_configs()
    LanguageModeling.prepare(configs)
    task = LanguageModeling.open(configs)
    return fit(make_setup(configs, task, seed=0), run_dir, **kwargs), task


def tensors(path: Path | str, lead: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(lead): v for k, v in load_file(path).items() if k.startswith(lead)}


def test_a_run_with_ema_saves_evaluates_and_serves_it(tmp_path: Path, text_file: Path) -> None:
    """The checkpoints hold `ema.*` under the params' names; the final val loss (and the best,
    hence the kept checkpoint) is the EMA model's; hooks and `load_model` give the EMA."""
    last = LastParams()
    summary, task = run_tiny(tmp_path / "run", text_file, 4, EMA_RUN, hooks=[last])
    path = Path(summary["checkpoint"])
    ema, params = tensors(path, "ema."), tensors(path, "params.")
    assert list(ema) == list(params)
    assert any(not torch.equal(ema[name], params[name]) for name in params)
    for name, value in ema.items():
        assert torch.equal(last.params[name], value), name
    loaded = load_for_inference(path)
    assert tree.to_dotted(loaded.params).keys() == ema.keys()
    for name, value in tree.to_dotted(loaded.params).items():
        assert torch.equal(value, ema[name]), name
    loss_fn = loaded.loss_fn(task)
    on_ema = evaluate(task, loss_fn, loaded.params, "val", batch_size=64)
    on_params = evaluate(
        task, loss_fn, tree.from_dotted(params, like=loaded.params), "val", batch_size=64
    )
    assert summary["metrics"]["val/loss"] == on_ema["loss"]
    assert on_params["loss"] != on_ema["loss"]
    assert summary["best_val_loss"] <= on_ema["loss"]


def test_a_run_with_ema_resumes_bit_exactly(tmp_path: Path, text_file: Path) -> None:
    """2 + 2 steps end where 4 straight steps do, EMA included."""
    straight, _ = run_tiny(tmp_path / "straight", text_file, 4, EMA_RUN)
    half, _ = run_tiny(tmp_path / "resumed", text_file, 2, EMA_RUN)
    assert half["steps"] == 2
    resumed, _ = run_tiny(tmp_path / "resumed", text_file, 4, EMA_RUN, resume="latest")
    assert resumed["start_step"] == 2 and resumed["steps"] == 4
    a, b = load_file(straight["checkpoint"]), load_file(resumed["checkpoint"])
    assert a.keys() == b.keys() and any(name.startswith("ema.") for name in a)
    for name, value in a.items():
        assert torch.equal(value, b[name]), name
    assert straight["metrics"] == resumed["metrics"]


def test_turning_the_ema_on_or_off_on_resume(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint without an EMA (EMA off, or written before EMA existed) has no `ema.*`;
    resumed with the EMA on (an accepted change), the EMA starts from its params; a checkpoint
    with an EMA resumed with it off loads without it. Both say so."""
    last = LastParams()
    off, _ = run_tiny(tmp_path / "run", text_file, 2, hooks=[last])
    assert last.ema == {}
    assert not any(name.startswith("ema.") for name in load_file(off["checkpoint"]))
    at_two = tensors(off["checkpoint"], "params.")
    on, _ = run_tiny(tmp_path / "run", text_file, 3, EMA_RUN, resume="latest")
    assert "holds no EMA of the params: it starts from them at step 2" in capsys.readouterr().err
    ema, params = tensors(on["checkpoint"], "ema."), tensors(on["checkpoint"], "params.")
    d = min(0.9, (1 + 3) / (10 + 3))
    for name, value in ema.items():
        expected = d * at_two[name].double() + (1 - d) * params[name].double()
        torch.testing.assert_close(value.double(), expected, atol=1e-6, rtol=1e-6)
    again, _ = run_tiny(tmp_path / "run", text_file, 4, resume="latest")
    assert "which this run (ema_decay = None) leaves out" in capsys.readouterr().err
    assert again["steps"] == 4
    assert not any(name.startswith("ema.") for name in load_file(again["checkpoint"]))


def test_lora_run_with_ema_averages_the_adapters(tmp_path: Path, text_file: Path) -> None:
    """With LoRA the EMA averages the adapters (the trained params); evaluation and inference
    merge the averaged adapters into the base."""
    summary, task = run_tiny(
        tmp_path / "run", text_file, 4, EMA_RUN + "LoRAConfig.rank = 2\nSchedule.peak_lr = 0.05\n"
    )
    path = Path(summary["checkpoint"])
    ema = tensors(path, "ema.")
    assert ema and all(name.startswith("lora.") for name in ema)
    assert any(not torch.equal(ema[name], tensors(path, "params.")[name]) for name in ema)
    loaded = load_for_inference(path)
    on_ema = evaluate(task, loaded.loss_fn(task), loaded.params, "val", batch_size=64)
    assert summary["metrics"]["val/loss"] == on_ema["loss"]


# ---- load_model on untrusted files ---------------------------------------------------------


def save_with_ema(directory: Path, ema: dict[str, torch.Tensor]) -> Path:
    """A checkpoint of the tiny GPT at init whose EMA holds `ema` (dotted names)."""
    record = CheckpointMeta.model_validate(
        {"step": 3, "model": "gpt", "model_config": CFG.model_dump(mode="json"), "configs": {}}
    ).as_dict()
    state = init_state(gpt.init(CFG, seed=0), SGD())._asdict()
    return checkpoint.save(directory, {**state, "ema": tree.from_dotted(ema)}, 3, record)


def test_load_model_overlays_a_partial_ema_by_name(tmp_path: Path) -> None:
    """A fine-tuning run's EMA covers its trained params only; the others come from params."""
    params = gpt.init(CFG, seed=0)
    averaged = {"ln_f.scale": torch.full_like(tree.to_dotted(params)["ln_f.scale"], 7.0)}
    _, _, _, loaded = load_model(save_with_ema(tmp_path, averaged))
    for name, value in tree.to_dotted(loaded).items():
        expected = averaged.get(name, tree.to_dotted(params)[name])
        assert torch.equal(value, expected), name


def test_load_model_refuses_an_ema_that_does_not_fit(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="its EMA holds tensors that name no param"):
        load_model(save_with_ema(tmp_path / "a", {"evil": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"ema\.ln_f\.scale: file has F32 \[3\]"):
        load_model(save_with_ema(tmp_path / "b", {"ln_f.scale": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"ema\.ln_f\.scale: file has F16"):
        load_model(save_with_ema(tmp_path / "c", {"ln_f.scale": torch.zeros(32).half()}))
