"""LoRA: adapters as a pure params transform that starts at the base model and trains alone."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from craft import checkpoint, tree
from craft.errors import ConfigError
from craft.models import gpt
from craft.optim import AdamW, Schedule
from craft.train import init_state, lora, make_train_step
from craft.train.finetune import load_initial_params
from craft.train.lora import LoRAConfig
from craft.train.meta import CheckpointMeta
from tests.test_finetune import batch, run_tiny

CFG = gpt.GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16)
LORA = LoRAConfig(rank=2, alpha=4.0)
CONSTANT = Schedule(kind="constant", peak_lr=1e-2)


def lora_params(seed: int = 0) -> dict:
    base = gpt.init(CFG, seed=seed)
    return lora.attach(base, lora.init(base, LORA, seed=seed))


def test_adapters_cover_the_attention_and_mlp_projections() -> None:
    adapters = tree.to_dotted(lora.init(gpt.init(CFG, seed=0), LORA, seed=0))
    assert list(adapters)[:4] == [
        "blocks.0.attn.qkv.a", "blocks.0.attn.qkv.b", "blocks.0.attn.proj.a",
        "blocks.0.attn.proj.b",
    ]  # fmt: skip
    assert len(adapters) == 2 * 4 * CFG.n_layer
    assert adapters["blocks.1.mlp.fc.a"].shape == (2, 16)  # A: [rank, in]
    assert adapters["blocks.1.mlp.fc.b"].shape == (64, 2)  # B: [out, rank], zeros
    assert not adapters["blocks.1.mlp.fc.b"].any()


def test_at_step_0_the_adapted_model_is_the_base_model_exactly() -> None:
    params = lora_params()
    tokens = batch(0)["inputs"]
    base = gpt.apply(params["base"], tokens, CFG)
    adapted = lora.adapted_apply(gpt.apply, LORA)(params, tokens, cfg=CFG)
    assert torch.equal(adapted, base)


def test_a_merged_weight_equals_the_two_path_layer() -> None:
    g = torch.Generator().manual_seed(0)
    w, a, b = (torch.randn(shape, generator=g) for shape in [(12, 8), (3, 8), (12, 3)])
    x = torch.randn(5, 8, generator=g)
    cfg = LoRAConfig(rank=3, alpha=6.0, targets=["layer"])
    merged = lora.merge({"layer": {"w": w}}, {"layer": {"a": a, "b": b}}, cfg)["layer"]["w"]
    two_paths = F.linear(x, w) + 2.0 * F.linear(F.linear(x, a), b)
    torch.testing.assert_close(F.linear(x, merged), two_paths, atol=1e-5, rtol=1e-5)


def train(steps: int, *, compile: bool = False, base_patterns: list[str] | None = None):
    params = lora_params()
    before = tree.tree_map(torch.clone, params)
    names = lora.trainable(params, base_patterns)
    optimizer = AdamW(weight_decay=0.1)
    state = init_state(params, optimizer, trainable=names)
    loss = functools.partial(gpt.loss, cfg=CFG)
    step = make_train_step(
        lambda p, b, *, rng: loss(lora.model_params(p, LORA), b, rng=rng), optimizer,
        CONSTANT, clip_norm=1.0, compile=compile, trainable=names,
    )  # fmt: skip
    losses = []
    for i in range(steps):
        state, metrics = step(state, batch(i % 2))
        losses.append(metrics["loss"].item())
    return before, state, names, losses


def test_only_the_adapters_train_and_merge_gives_the_adapted_logits() -> None:
    before, state, names, losses = train(6)
    assert losses[-1] < losses[0]
    for name, value in tree.to_dotted(state.params).items():
        changed = not torch.equal(value, tree.to_dotted(before)[name])
        assert changed == name.startswith("lora."), name
    assert [n.removeprefix("mu.") for n in tree.to_dotted(state.opt_state["mu"])] == [
        n for n in names
    ]
    assert tree.count(state.opt_state["mu"]) == tree.count(state.params["lora"])
    tokens = batch(3)["inputs"]
    adapted = lora.adapted_apply(gpt.apply, LORA)(state.params, tokens, cfg=CFG)
    merged = gpt.apply(lora.model_params(state.params, LORA), tokens, CFG)
    assert not torch.equal(merged, gpt.apply(state.params["base"], tokens, CFG))
    torch.testing.assert_close(merged, adapted, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_the_compiled_step_trains_adapters_and_frozen_params_as_the_eager_one() -> None:
    # LoRA plus one base layer norm: frozen params and adapters in one compiled step.
    _, eager, names, eager_losses = train(3, base_patterns=["ln_f.scale"])
    before, compiled, _, compiled_losses = train(3, compile=True, base_patterns=["ln_f.scale"])
    assert "base.ln_f.scale" in names
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5)
    for name, value in tree.to_dotted(compiled.params).items():
        torch.testing.assert_close(value, tree.to_dotted(eager.params)[name], atol=1e-5, rtol=1e-5)
        if name not in names:
            assert torch.equal(value, tree.to_dotted(before)[name]), name


def test_bad_targets_and_ranks_are_named() -> None:
    base = gpt.init(CFG, seed=0)
    with pytest.raises(ConfigError, match=r"'attn\.qkvv' matches no linear layer; the model's"):
        lora.init(base, LoRAConfig(rank=2, targets=["attn.qkv", "attn.qkvv"]), seed=0)
    with pytest.raises(ConfigError, match=r"rank = 17 exceeds the smaller side of"):
        lora.init(base, LoRAConfig(rank=17), seed=0)


def test_targets_take_patterns_and_nn_module_names() -> None:
    params = {"h": [{"c_fc": {"weight": torch.zeros(6, 4), "bias": torch.zeros(6)}}]}
    cfg = LoRAConfig(rank=2, targets=["h.*.c_fc"])
    assert lora.target_weights(params, cfg) == ["h.0.c_fc.weight"]


LORA_GIN = "LoRAConfig.rank = 2\nLoRAConfig.alpha = 4.0\n"


def test_a_lora_run_resumes_bit_exactly_and_its_checkpoint_starts_another(
    tmp_path: Path,
    text_file: Path,
) -> None:
    source = Path(run_tiny(tmp_path / "base", text_file, steps=2)["checkpoint"])
    tuning = f"RunConfig.init_from = '{source}'\n" + LORA_GIN
    straight = run_tiny(tmp_path / "straight", text_file, steps=8, extra=tuning, samples=True)
    # Hooks run the model on the merged params: samples are written as in any run.
    assert (tmp_path / "straight/samples.txt").read_text().count("=== step") == 2
    run_tiny(tmp_path / "resumed", text_file, steps=4, extra=tuning)
    resumed = run_tiny(tmp_path / "resumed", text_file, 8, tuning, resume=tmp_path / "resumed")
    a, b = load_file(straight["checkpoint"]), load_file(resumed["checkpoint"])
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # The checkpoint holds the base (as init_from gave it) and the adapters; only these have
    # optimizer state.
    start = load_file(source)
    assert torch.equal(a["params.base.blocks.0.attn.qkv.w"], start["params.blocks.0.attn.qkv.w"])
    assert not any(k.startswith("opt_state.mu.base") for k in a)
    record = checkpoint.read_meta(Path(straight["checkpoint"]))
    assert record["configs"]["LoRAConfig"]["rank"] == 2
    # A LoRA checkpoint starts another run as the merged model.
    meta = CheckpointMeta.model_validate(record)
    held = gpt.GPTConfig.model_validate(meta.model_settings)
    merged = load_initial_params(straight["checkpoint"], gpt.SPEC, held)
    params = tree.from_dotted(
        {k.removeprefix("params."): v for k, v in a.items() if k.startswith("params.")}
    )
    expected = lora.model_params(params, LORA.model_copy(update={"alpha": 4.0}))
    for name, value in tree.to_dotted(merged).items():
        assert torch.equal(value, tree.to_dotted(expected)[name]), name
