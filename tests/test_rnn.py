"""The char-RNN: parity with torch.nn's recurrent modules, init, dropout keys and learning."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from craft import config, optim, train, tree
from craft.models import rnn
from craft.nn import key

TORCH_MODULES = {"elman": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


def tokens(vocab: int, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.randint(vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cell", ["elman", "gru", "lstm"])
def test_apply_matches_torch_module(cell: rnn.Cell) -> None:
    cfg = rnn.RNNConfig(vocab_size=11, cell=cell, n_layer=2, hidden=16, embd=8)
    params = rnn.init(cfg, seed=0)
    # A unit-scale head, so the logits show the hidden states undamped.
    params["head"]["w"] = torch.randn(11, 16, generator=torch.Generator().manual_seed(1))
    module = TORCH_MODULES[cell](8, 16, num_layers=2, batch_first=True)
    module.load_state_dict(
        {
            f"{name}_l{index}": value
            for index, layer in enumerate(params["layers"])
            for name, value in layer.items()
        }
    )
    x = tokens(11, (3, 9))
    with torch.no_grad():
        hidden, _ = module(F.embedding(x, params["tok"]["embedding"]))
        expected = F.linear(hidden, params["head"]["w"], params["head"]["b"])
        got = rnn.apply(params, x, cfg)
    assert got.shape == (3, 9, 11)
    assert (got - expected).abs().max().item() < 1e-5


def test_fresh_loss_is_near_log_vocab() -> None:
    cfg = rnn.RNNConfig(vocab_size=65, hidden=64, embd=32, n_layer=2)
    params = rnn.init(cfg, seed=0)
    batch = {"inputs": tokens(65, (8, 32), seed=1), "targets": tokens(65, (8, 32), seed=2)}
    with torch.no_grad():
        value, aux = rnn.loss(params, batch, cfg)
    assert abs(value.item() - math.log(65)) < 0.1
    assert aux["weight"].item() == 8 * 32


def test_loss_ignores_negative_targets() -> None:
    cfg = rnn.RNNConfig(vocab_size=7, hidden=8, embd=4)
    params = rnn.init(cfg, seed=0)
    inputs, targets = tokens(7, (2, 6), seed=1), tokens(7, (2, 6), seed=2)
    targets[0, :4] = -1
    with torch.no_grad():
        value, aux = rnn.loss(params, {"inputs": inputs, "targets": targets}, cfg)
        logits = rnn.apply(params, inputs, cfg)
    kept = targets >= 0
    assert aux["weight"].item() == 8
    torch.testing.assert_close(value, F.cross_entropy(logits[kept], targets[kept]))


@settings(max_examples=30, deadline=None)
@given(
    vocab=st.integers(1, 40),
    cell=st.sampled_from(["elman", "gru", "lstm"]),
    n_layer=st.integers(1, 3),
    hidden=st.integers(1, 24),
    embd=st.integers(1, 12),
)
def test_param_count_matches_init(
    vocab: int, cell: rnn.Cell, n_layer: int, hidden: int, embd: int
) -> None:
    cfg = rnn.RNNConfig(vocab_size=vocab, cell=cell, n_layer=n_layer, hidden=hidden, embd=embd)
    assert rnn.param_count(cfg) == tree.count(rnn.init(cfg, seed=0))


def test_dropout_follows_the_key() -> None:
    cfg = rnn.RNNConfig(vocab_size=10, hidden=16, embd=8, n_layer=2, dropout=0.5)
    params = rnn.init(cfg, seed=0)
    x = tokens(10, (2, 5))
    with torch.no_grad():
        first = rnn.apply(params, x, cfg, rng=key(1))
        again = rnn.apply(params, x, cfg, rng=key(1))
        other = rnn.apply(params, x, cfg, rng=key(2))
        off = rnn.apply(params, x, cfg)
        no_rate = rnn.apply(params, x, cfg.model_copy(update={"dropout": 0.0}), rng=key(1))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert not torch.allclose(first, off)
    assert torch.equal(off, no_rate)  # rng None means no dropout at all


@pytest.mark.parametrize("cell", ["elman", "gru", "lstm"])
def test_tiny_model_memorizes_a_batch(cell: rnn.Cell) -> None:
    # Random sequences with distinct first tokens: only memorization brings the loss down
    # from ln(16) ~ 2.77, and the first token tells the model which row it is reading.
    generator = torch.Generator().manual_seed(0)
    seq = torch.randint(16, (4, 17), generator=generator)
    seq[:, 0] = torch.arange(4)
    batch = {"inputs": seq[:, :-1], "targets": seq[:, 1:]}
    cfg = rnn.RNNConfig(vocab_size=16, cell=cell, hidden=64, embd=16)
    loss_fn = functools.partial(rnn.loss, cfg=cfg)
    state = train.init_state(rnn.init(cfg, seed=0), optim.AdamW(weight_decay=0.0))
    step = train.make_train_step(
        loss_fn,
        optim.AdamW(weight_decay=0.0),
        optim.Schedule(kind="constant", peak_lr=1e-2),
        compile=False,
    )
    losses = []
    for _ in range(100):
        state, metrics = step(state, batch)
        losses.append(metrics["loss"].item())
    with torch.no_grad():
        final, _ = rnn.loss(state.params, batch, cfg)
        predicted = rnn.apply(state.params, batch["inputs"], cfg).argmax(-1)
    assert losses[0] > 2.5  # it started at chance
    assert final.item() < 0.05, f"loss {final.item():.3f} after 100 steps"  # ~1e-3 in practice
    assert torch.equal(predicted, batch["targets"])  # every next token recalled


def test_vocab_unset_raises() -> None:
    cfg = rnn.RNNConfig()
    with pytest.raises(ValueError, match="vocab_size is not set"):
        cfg.vocab()
    with pytest.raises(ValueError, match="vocab_size is not set"):
        rnn.init(cfg, seed=0)


def test_config_binds_through_gin() -> None:
    config.parse(gin_params=["RNNConfig.cell = 'lstm'", "--gin.RNNConfig.hidden=32"])
    cfg = config.build(rnn.RNNConfig)
    assert (cfg.cell, cfg.hidden, cfg.n_layer) == ("lstm", 32, 1)
