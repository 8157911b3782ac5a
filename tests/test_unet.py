"""The U-Net noise predictor: shapes, counts, its nn.Module twin, rows, keys, compile, configs."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.baseline_unet import baseline_unet
from craft import tree
from craft.models import MODELS, unet
from craft.nn import fold_in, key

TINY = unet.UNetConfig(
    num_classes=3, channels=8, channel_mults=(1, 2), groups=4, time_dim=16, image_size=8
)
CONFIGS = [
    TINY,
    unet.UNetConfig(
        num_classes=4,
        in_channels=3,
        image_size=12,
        channels=8,
        channel_mults=(1, 2, 3),
        blocks_per_level=2,
        attention=True,
        heads=2,
        groups=4,
        time_dim=8,
        dropout=0.2,
    ),
    unet.UNetConfig(num_classes=2, image_size=5, channels=4, channel_mults=(2,), groups=2),
    unet.UNetConfig(
        num_classes=5,
        in_channels=2,
        image_size=8,
        channels=4,
        channel_mults=(1, 2),
        groups=2,
    ),
]
IDS = ["tiny", "attention", "one_level", "two_channels"]


def inputs(cfg: unet.UNetConfig, b: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (b, cfg.in_channels, cfg.image_size, cfg.image_size)
    return {
        "images": torch.randn(shape, generator=gen),
        "t": torch.randint(0, 1000, (b,), generator=gen),
        "labels": torch.randint(0, cfg.classes() + 1, (b,), generator=gen),
    }


def perturbed(params: tree.Params, seed: int = 1) -> tree.Params:
    """Every leaf moved, the zero-initialised last conv and attention output included, so the
    output is not 0 and a swapped or skipped param cannot go unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    return tree.tree_map(lambda p: p + 0.1 * torch.randn(p.shape, generator=gen), params)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_output_shape_count_and_zero_start(cfg: unet.UNetConfig) -> None:
    params = unet.init(cfg, seed=0)
    assert unet.param_count(cfg) == tree.count(params)
    batch = inputs(cfg, b=3)
    eps = unet.apply(params, batch, cfg)
    assert eps.shape == batch["images"].shape
    # The last conv starts at zero: a fresh model predicts no noise at all.
    assert torch.all(eps == 0)
    assert unet.apply(perturbed(params), batch, cfg).abs().mean() > 0.01


@st.composite
def small_configs(draw: st.DrawFn) -> unet.UNetConfig:
    groups = draw(st.sampled_from([1, 2, 4]))
    mults = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
    attention = draw(st.booleans())
    channels = groups * draw(st.integers(1, 3))
    heads = draw(st.sampled_from([h for h in (1, 2, 4) if channels * mults[-1] % h == 0]))
    return unet.UNetConfig(
        num_classes=draw(st.integers(1, 5)),
        in_channels=draw(st.integers(1, 3)),
        image_size=2 ** (len(mults) - 1) * draw(st.integers(1, 3)),
        channels=channels,
        channel_mults=mults,
        blocks_per_level=draw(st.integers(1, 2)),
        attention=attention,
        heads=heads,
        groups=groups,
        time_dim=2 * draw(st.integers(1, 8)),
    )


@settings(max_examples=40, deadline=None)
@given(small_configs())
def test_param_count_is_the_count_of_inits_tensors(cfg: unet.UNetConfig) -> None:
    params = unet.init(cfg, seed=0)
    assert unet.param_count(cfg) == tree.count(params)
    # The twin holds exactly these params (load_state_dict is strict).
    assert sum(p.numel() for p in baseline_unet(params, cfg).parameters()) == tree.count(params)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_unet_matches_its_nn_module_twin(cfg: unet.UNetConfig) -> None:
    params = perturbed(unet.init(cfg, seed=2))
    batch = inputs(cfg, b=5)
    with torch.no_grad():
        expected = baseline_unet(params, cfg).eval()(**batch)  # eval: no dropout
    torch.testing.assert_close(unet.apply(params, batch, cfg), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg", [CONFIGS[1].model_copy(update={"attention": False}), CONFIGS[3]])
def test_flops_per_example_counts_the_convs_and_linears(cfg: unet.UNetConfig) -> None:
    params, batch = unet.init(cfg, seed=0), inputs(cfg, b=2)
    with FlopCounterMode(display=False) as counter:
        unet.apply(params, batch, cfg)
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    # The counter saw the forward pass of 2 images; training is 3 forward passes' worth.
    assert unet.flops_per_example(cfg, shape) == 3 * counter.get_total_flops() / 2


def test_flops_of_attention() -> None:
    """Apart: the FLOP counter leaves out CPU attention (its SDPA kernel is not counted)."""
    cfg = CONFIGS[1].model_copy(update={"attention": False})
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    # Attention adds its projections (4 C^2 per position) and its two matmuls (2 P C each).
    low, positions = cfg.widths[-1], (cfg.image_size // 4) ** 2
    extra = 6 * (positions * 4 * low * low + 2 * positions * positions * low)
    assert unet.flops_per_example(CONFIGS[1], shape) == unet.flops_per_example(cfg, shape) + extra


def test_a_rows_output_depends_only_on_its_row_and_key() -> None:
    cfg = CONFIGS[1]
    params, batch = perturbed(unet.init(cfg, seed=0)), inputs(cfg, b=6)
    keys = fold_in(key(3), torch.arange(6))
    full = unet.apply(params, batch, cfg, rng=keys)
    picked = torch.tensor([4, 1])
    part = unet.apply(params, {k: v[picked] for k, v in batch.items()}, cfg, rng=keys[picked])
    torch.testing.assert_close(part, full[picked], atol=1e-5, rtol=1e-5)
    # Other rows changing (images, timesteps, labels and keys) leaves row 4 alone.
    other = {k: v.clone() for k, v in batch.items()}
    for name, value in inputs(cfg, b=4, seed=9).items():
        other[name][:4] = value
    shuffled = keys.clone()
    shuffled[:4] = keys[:4].flip(0)
    moved = unet.apply(params, other, cfg, rng=shuffled)
    torch.testing.assert_close(moved[4], full[4], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(moved[0], full[0])


def test_dropout_follows_the_key() -> None:
    cfg = CONFIGS[1]
    params, batch = perturbed(unet.init(cfg, seed=0)), inputs(cfg)
    a, b = unet.apply(params, batch, cfg, rng=key(7)), unet.apply(params, batch, cfg, rng=key(7))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, unet.apply(params, batch, cfg, rng=key(8)))
    assert not torch.allclose(a, unet.apply(params, batch, cfg))


def test_the_no_label_id_reads_the_last_row_of_the_table() -> None:
    cfg = TINY
    params, batch = perturbed(unet.init(cfg, seed=0)), inputs(cfg, b=4)
    batch["labels"] = torch.tensor([0, cfg.classes(), 2, cfg.classes()])
    before = unet.apply(params, batch, cfg)
    params["labels"]["embedding"][cfg.classes()] += 1.0
    after = unet.apply(params, batch, cfg)
    torch.testing.assert_close(after[[0, 2]], before[[0, 2]], rtol=0, atol=0)
    assert not torch.allclose(after[[1, 3]], before[[1, 3]])


def test_timesteps_and_labels_change_the_prediction() -> None:
    cfg = TINY
    params, batch = perturbed(unet.init(cfg, seed=0)), inputs(cfg, b=1)
    base = unet.apply(params, batch, cfg)
    for name, value in (("t", batch["t"] + 1), ("labels", (batch["labels"] + 1) % 4)):
        assert not torch.allclose(base, unet.apply(params, batch | {name: value}, cfg))


def test_timestep_features() -> None:
    features = unet.timestep_features(torch.tensor([0, 7]), 8)
    assert features.shape == (2, 8)
    torch.testing.assert_close(features[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    torch.testing.assert_close(features[1, 0], torch.sin(torch.tensor(7.0)))  # frequency 1
    torch.testing.assert_close(features.pow(2).view(2, 2, 4).sum(1), torch.ones(2, 4))


@pytest.mark.parametrize(
    "backend",
    [
        "aot_eager",  # the graph as the train step traces it, without codegen: about 2 s
        # inductor's kernels: about 45 s on 2 cold cores (3 s with its cache warm)
        pytest.param("inductor", marks=pytest.mark.slow),
    ],
)
def test_compiled_apply_equals_eager(backend: str) -> None:
    cfg = TINY.model_copy(update={"attention": True, "heads": 2, "dropout": 0.2})
    params, batch = perturbed(unet.init(cfg, seed=0)), inputs(cfg, b=3)
    keys = fold_in(key(5), torch.arange(3))
    # fullgraph: a graph break fails the test.
    compiled = torch.compile(unet.apply, fullgraph=True, backend=backend)
    torch.testing.assert_close(
        compiled(params, batch, cfg, rng=keys),
        unet.apply(params, batch, cfg, rng=keys),
        atol=1e-4,
        rtol=1e-4,
    )


def test_spec_is_registered() -> None:
    spec = MODELS["unet"]
    assert spec is unet.SPEC and spec.config is unet.UNetConfig
    assert spec.inputs == "noisy_images" and spec.data_fields == ("num_classes",)
    assert spec.flops(unet.UNetConfig(num_classes=10), (1, 28, 28)) > 0  # type: ignore[operator]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"image_size": 30, "channel_mults": (1, 2, 2)},
            r"image_size=30 must divide by 2\*\*2 = 4: 3 levels halve it 2 times",
        ),
        ({"image_size": 28, "channel_mults": (1, 2, 2, 2)}, r"must divide by 2\*\*3 = 8"),
        ({"image_size": 30, "channel_mults": (1, 2)}, None),
        ({"channels": 12, "groups": 8}, "groups=8 must divide channels=12"),
        ({"channels": 12, "groups": 8}, r"every level's width \(12, 24, 24\)"),
        ({"channels": 8, "channel_mults": (1, 3), "groups": 16}, "groups=16 must divide"),
        ({"channels": 8, "channel_mults": (1, 3), "groups": 2}, None),
        ({"channel_mults": (1, 0)}, "must all be positive"),
        ({"channel_mults": ()}, "at least 1 item"),
        ({"time_dim": 15}, "time_dim=15 must be even"),
        ({"attention": True, "heads": 3}, "heads=3 must divide the lowest level's width 32"),
        ({"attention": False, "heads": 3}, None),
        ({"dropout": 1.0}, "less than 1"),
        ({"num_classes": 0}, "greater than 0"),
        ({"channel": 3}, "Extra inputs are not permitted"),
    ],
)
def test_config_errors(fields: dict[str, Any], message: str | None) -> None:
    if message is None:  # a near miss that is fine
        unet.UNetConfig(**fields)
        return
    with pytest.raises(ValidationError, match=message):
        unet.UNetConfig(**fields)


def test_num_classes_comes_from_the_data() -> None:
    with pytest.raises(ValueError, match="num_classes is not set"):
        unet.param_count(unet.UNetConfig())
    with pytest.raises(ValueError, match="num_classes is not set"):
        unet.init(unet.UNetConfig(), seed=0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"images": torch.zeros(2, 1, 10, 10)}, r"do not fit \[B, \*\(1, 8, 8\)\]"),
        ({"images": torch.zeros(1, 8, 8)}, "do not fit"),
        ({"t": torch.zeros(3, dtype=torch.int64)}, r"t must be int64 of shape \[B\] = \(2,\)"),
        ({"t": torch.zeros(2, 1, dtype=torch.int64)}, r"got torch.int64 of shape \(2, 1\)"),
        ({"t": torch.zeros(2)}, "t must be int64 .* got torch.float32"),
        ({"labels": torch.zeros(2, dtype=torch.int32)}, "labels must be int64"),
        ({"labels": torch.zeros((), dtype=torch.int64)}, r"labels must be .* shape \(\)"),
    ],
)
def test_inputs_that_do_not_fit_are_refused(change: dict[str, torch.Tensor], message: str) -> None:
    params, batch = unet.init(TINY, seed=0), inputs(TINY, b=2)
    with pytest.raises(ValueError, match=message):
        unet.apply(params, batch | change, TINY)


def test_inputs_must_be_the_three_named_tensors() -> None:
    params, batch = unet.init(TINY, seed=0), inputs(TINY, b=2)
    with pytest.raises(
        ValueError, match=r"keys \['images', 't', 'labels'\], got \['images', 't'\]"
    ):
        unet.apply(params, {"images": batch["images"], "t": batch["t"]}, TINY)
    with pytest.raises(ValueError, match="got Tensor"):
        unet.apply(params, batch["images"], TINY)  # type: ignore[arg-type]
