"""Conv layers and the image classifiers (CNN, MLP): reference math, counts, dropout, configs."""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from torch import nn

from benchmarks.baseline_cnn import baseline_cnn
from craft import tree
from craft.models import cnn, mlp
from craft.nn import (
    avg_pool2d,
    conv2d,
    dropout,
    fold_in,
    global_avg_pool,
    init_conv2d,
    key,
    linear,
    max_pool2d,
)

CNN_CONFIGS = [
    cnn.CNNConfig(num_classes=10),
    cnn.CNNConfig(num_classes=7, channels=(8, 16, 16), kernel=3, hidden=0, head="global_avg"),
    cnn.CNNConfig(
        num_classes=5,
        in_channels=3,
        image_size=12,
        channels=(8, 16),
        convs_per_stage=2,
        kernel=3,
        norm="group",
        groups=4,
        hidden=24,
        dropout=0.3,
    ),
]
MLP_CONFIGS = [
    mlp.MLPConfig(num_classes=10),
    mlp.MLPConfig(num_classes=3, in_channels=3, image_size=8, widths=(16, 8, 4), dropout=0.2),
    mlp.MLPConfig(num_classes=4, image_size=6, widths=()),
]
MODELS = [(cnn, c) for c in CNN_CONFIGS] + [(mlp, c) for c in MLP_CONFIGS]
IDS = [f"cnn{i}" for i in range(len(CNN_CONFIGS))] + [f"mlp{i}" for i in range(len(MLP_CONFIGS))]


def images(cfg: cnn.CNNConfig | mlp.MLPConfig, b: int = 4, seed: int = 0) -> torch.Tensor:
    shape = (b, cfg.in_channels, cfg.image_size, cfg.image_size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def perturbed(params: tree.Params) -> tree.Params:
    """Non-trivial biases and norm params, so a swapped or skipped one cannot go unnoticed."""
    gen = torch.Generator().manual_seed(1)
    return tree.tree_map(
        lambda p: p + 0.1 * torch.randn(p.shape, generator=gen) if p.ndim == 1 else p, params
    )


def reference_mlp(params: tree.Params) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    for layer in params["layers"]:
        layers += [_linear(layer), nn.ReLU()]
    return nn.Sequential(*layers, _linear(params["head"]))


def _linear(params: tree.Params) -> nn.Linear:
    module = nn.Linear(params["w"].shape[1], params["w"].shape[0])
    module.load_state_dict({"weight": params["w"], "bias": params["b"]})
    return module


@pytest.mark.parametrize(("model", "cfg"), MODELS, ids=IDS)
def test_logits_shape_and_param_count(model: ModuleType, cfg: Any) -> None:
    params = model.init(cfg, seed=0)
    logits = model.apply(params, images(cfg, b=3), cfg)
    assert logits.shape == (3, cfg.classes())
    assert model.param_count(cfg) == tree.count(params)


@pytest.mark.parametrize("cfg", CNN_CONFIGS, ids=IDS[: len(CNN_CONFIGS)])
def test_cnn_matches_the_reference_module(cfg: cnn.CNNConfig) -> None:
    params = perturbed(cnn.init(cfg, seed=2))
    x = images(cfg, b=5)
    with torch.no_grad():
        expected = baseline_cnn(params, cfg).eval()(x)  # eval: no dropout
    torch.testing.assert_close(cnn.apply(params, x, cfg), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg", MLP_CONFIGS, ids=IDS[len(CNN_CONFIGS) :])
def test_mlp_matches_the_reference_module(cfg: mlp.MLPConfig) -> None:
    params = perturbed(mlp.init(cfg, seed=2))
    x = images(cfg, b=5)
    with torch.no_grad():
        expected = reference_mlp(params)(x)
    torch.testing.assert_close(mlp.apply(params, x, cfg), expected, atol=1e-5, rtol=1e-5)


def test_fresh_models_start_near_uniform() -> None:
    for model, cfg in ((cnn, CNN_CONFIGS[0]), (mlp, MLP_CONFIGS[0])):
        logits = model.apply(model.init(cfg, seed=0), images(cfg, b=64), cfg)
        # The loss averaged over every possible label: ln(classes) for exactly uniform logits.
        loss = (logits.logsumexp(-1) - logits.mean(-1)).mean()
        assert abs(loss.item() - math.log(10)) < 0.2


DROPOUT = [
    (cnn, cnn.CNNConfig(num_classes=6, channels=(4, 8), kernel=3, hidden=16, dropout=0.5)),
    (mlp, mlp.MLPConfig(num_classes=6, image_size=8, widths=(32, 16), dropout=0.5)),
]


@pytest.mark.parametrize(("model", "cfg"), DROPOUT, ids=["cnn", "mlp"])
def test_dropout_follows_the_key(model: ModuleType, cfg: Any) -> None:
    apply = model.apply
    params, x = model.init(cfg, seed=0), images(cfg, b=6)
    torch.testing.assert_close(apply(params, x, cfg), apply(params, x, cfg), rtol=0, atol=0)
    a, b = apply(params, x, cfg, rng=key(7)), apply(params, x, cfg, rng=key(7))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, apply(params, x, cfg, rng=key(8)))
    assert not torch.allclose(a, apply(params, x, cfg))


@pytest.mark.parametrize(("model", "cfg"), DROPOUT, ids=["cnn", "mlp"])
def test_a_rows_logits_depend_only_on_its_row_and_key(model: ModuleType, cfg: Any) -> None:
    apply = model.apply
    params, x = model.init(cfg, seed=0), images(cfg, b=6)
    keys = fold_in(key(3), torch.arange(6))
    full = apply(params, x, cfg, rng=keys)
    picked = torch.tensor([4, 1])
    part = apply(params, x[picked], cfg, rng=keys[picked])
    torch.testing.assert_close(part, full[picked], atol=1e-6, rtol=1e-6)
    # Other rows changing (inputs and keys) leaves row 4 alone.
    other = x.clone()
    other[:4] = images(cfg, b=4, seed=9)
    shuffled = keys.clone()
    shuffled[:4] = keys[:4].flip(0)
    torch.testing.assert_close(apply(params, other, cfg, rng=shuffled)[4], full[4])


shapes = st.tuples(
    st.integers(1, 3),  # batch
    st.integers(1, 4),  # in channels
    st.integers(1, 5),  # out channels
    st.sampled_from([1, 3, 5]),  # kernel
    st.integers(5, 11),  # height
    st.integers(5, 11),  # width
    st.integers(1, 3),  # stride
)


@settings(max_examples=30, deadline=None)
@given(shapes, st.one_of(st.just("same"), st.integers(0, 2)), st.booleans())
def test_conv2d_equals_nn_conv2d(shape: tuple[int, ...], padding: str | int, bias: bool) -> None:
    b, c_in, c_out, k, h, w, stride = shape
    params = init_conv2d(c_in, c_out, k, torch.Generator().manual_seed(0), bias=bias)
    pad = k // 2 if padding == "same" else padding
    module = nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, bias=bias)
    state = {"weight": params["w"]} | ({"bias": params["b"] + 0.3} if bias else {})
    module.load_state_dict(state)
    if bias:
        params["b"] = state["bias"]
    x = torch.randn(b, c_in, h, w)
    out = conv2d(params, x, stride=stride, padding=padding)  # type: ignore[arg-type]
    with torch.no_grad():
        torch.testing.assert_close(out, module(x), atol=1e-5, rtol=1e-5)
    if padding == "same":
        assert out.shape[-2:] == (math.ceil(h / stride), math.ceil(w / stride))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(3, 9), st.integers(3, 9), st.integers(1, 3), st.floats(-5, 5))
@example(c=1, h=3, w=3, size=2, shift=0.0)  # a ragged edge: failed 1 CI run in a few
def test_pooling_laws(c: int, h: int, w: int, size: int, shift: float) -> None:
    x = torch.randn(2, c, h, w)
    top = max_pool2d(x, size)
    assert top.shape == (2, c, h // size, w // size)
    # The max bounds the mean, commutes with adding a constant and with monotone maps.
    assert torch.all(top >= avg_pool2d(x, size) - 1e-6)
    torch.testing.assert_close(max_pool2d(x + shift, size), top + shift)
    torch.testing.assert_close(max_pool2d(F.relu(x), size), F.relu(top))
    # Every pooled value is one of the inputs of its window.
    # contiguous: torch.isin fails on a strided view (a ragged edge cut off: h=3, size=2).
    window = x[..., : size * (h // size), : size * (w // size)].contiguous()
    assert torch.isin(top, window).all()
    torch.testing.assert_close(global_avg_pool(x), x.mean(dim=(2, 3)))


def test_he_init_scale() -> None:
    params = init_conv2d(64, 128, 3, torch.Generator().manual_seed(0))
    assert params["w"].shape == (128, 64, 3, 3) and torch.all(params["b"] == 0)
    assert abs(params["w"].std().item() / math.sqrt(2 / (64 * 9)) - 1) < 0.02


def test_conv2d_rejects_bad_padding() -> None:
    params = init_conv2d(1, 2, 2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="odd kernel"):
        conv2d(params, torch.randn(1, 1, 6, 6))
    with pytest.raises(ValueError, match="padding must be"):
        conv2d(params, torch.randn(1, 1, 6, 6), padding=-1)


def test_flops_per_example() -> None:
    cfg = cnn.CNNConfig(num_classes=10, channels=(4, 8), kernel=3, hidden=16)
    macs = 28 * 28 * 4 * 9 + 14 * 14 * 8 * 4 * 9 + 8 * 7 * 7 * 16 + 16 * 10
    assert cnn.flops_per_example(cfg, (1, 28, 28)) == 6 * macs
    small = mlp.MLPConfig(num_classes=10, widths=(32,))
    assert mlp.flops_per_example(small, (1, 28, 28)) == 6 * (784 * 32 + 32 * 10)


def test_specs() -> None:
    for spec, config in ((cnn.SPEC, cnn.CNNConfig), (mlp.SPEC, mlp.MLPConfig)):
        assert spec.config is config and spec.inputs == "images"
        assert spec.data_fields == ("num_classes",)
        assert spec.flops(config(num_classes=10), (1, 28, 28)) > 0  # type: ignore[operator]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"image_size": 7, "channels": (8, 8, 8)}, "does not survive 3 2x2 poolings"),
        ({"kernel": 4}, "must be odd"),
        ({"norm": "group", "groups": 3, "channels": (8, 12)}, "groups=3 must divide"),
        ({"channels": (8, 0)}, "must all be positive"),
        ({"channels": ()}, "at least 1 item"),
        ({"dropout": 1.0}, "less than 1"),
        ({"widht": 3}, "Extra inputs are not permitted"),
    ],
)
def test_cnn_config_errors(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        cnn.CNNConfig(**fields)


def test_mlp_config_errors() -> None:
    with pytest.raises(ValidationError, match="must all be positive"):
        mlp.MLPConfig(widths=(8, -1))
    with pytest.raises(ValidationError, match="greater than 0"):
        mlp.MLPConfig(image_size=0)


def test_num_classes_comes_from_the_data() -> None:
    with pytest.raises(ValueError, match="num_classes is not set"):
        cnn.init(cnn.CNNConfig(), seed=0)
    with pytest.raises(ValueError, match="num_classes is not set"):
        mlp.param_count(mlp.MLPConfig())


@pytest.mark.parametrize(("model", "cfg"), [(cnn, CNN_CONFIGS[0]), (mlp, MLP_CONFIGS[0])])
def test_images_of_the_wrong_shape_are_refused(model: ModuleType, cfg: Any) -> None:
    params = model.init(cfg, seed=0)
    with pytest.raises(ValueError, match=r"do not fit \[B, \*\(1, 28, 28\)\]"):
        model.apply(params, torch.zeros(2, 1, 32, 32), cfg)
    with pytest.raises(ValueError, match="do not fit"):
        model.apply(params, torch.zeros(2, 28, 28), cfg)


@pytest.mark.parametrize("cfg", [*CNN_CONFIGS, DROPOUT[0][1]], ids=[*IDS[:3], "dropout"])
def test_cnn_logits_are_the_head_over_the_features(cfg: cnn.CNNConfig) -> None:
    params = perturbed(cnn.init(cfg, seed=3))
    x = images(cfg, b=5)
    feats = cnn.features(params, x, cfg)
    assert feats.shape == (5, cfg.hidden or cfg.features)
    torch.testing.assert_close(cnn.apply(params, x, cfg), linear(params["head"], feats))
    # With a key, apply drops from these very features at its second site (fold_in(key, 1)).
    noisy = cnn.features(params, x, cfg, rng=key(5))
    head_input = dropout(noisy, cfg.dropout, fold_in(key(5), 1))
    torch.testing.assert_close(
        cnn.apply(params, x, cfg, rng=key(5)), linear(params["head"], head_input)
    )
    if cfg.hidden and cfg.dropout:
        assert not torch.allclose(noisy, feats)  # the first site's dropout is on
