"""Laws of the noise schedule, the forward process and the samplers (no trained model needed)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from craft.nn.random import fold_in, key, normal
from craft.tasks import samplers
from craft.tasks.noise import alphas_bar, q_sample

kinds = st.sampled_from(["linear", "cosine"])


@settings(max_examples=40, deadline=None)
@given(kind=kinds, steps=st.integers(2, 2000))
def test_alphas_bar_decrease_strictly_inside_zero_one(kind: str, steps: int) -> None:
    table = alphas_bar(kind, steps)  # type: ignore[arg-type]
    assert table.shape == (steps,) and table.dtype == torch.float64
    assert bool((table > 0).all()) and bool((table < 1).all())
    assert bool((table[1:] < table[:-1]).all())


@settings(max_examples=25, deadline=None)
@given(start=st.floats(1e-5, 0.01), width=st.floats(0.0, 0.05), steps=st.integers(2, 500))
def test_linear_schedule_is_the_product_of_one_minus_beta(
    start: float, width: float, steps: int
) -> None:
    end = start + width
    betas = torch.linspace(start, end, steps, dtype=torch.float64)
    expected = torch.tensor([float(torch.prod(1 - betas[: t + 1])) for t in range(steps)])
    torch.testing.assert_close(alphas_bar("linear", steps, start, end), expected.double())


@settings(max_examples=12, deadline=None)
@given(kind=kinds, t=st.integers(0, 999), value=st.floats(-1, 1))
def test_q_sample_has_the_moments_of_q_xt_given_x0(kind: str, t: int, value: float) -> None:
    """Over many noise draws, x_t has mean sqrt(ᾱ_t) x_0 and variance 1 - ᾱ_t."""
    table = alphas_bar(kind, 1000)  # type: ignore[arg-type]
    rows = 20_000
    x0 = torch.full((rows, 1, 2, 2), value)
    noise = normal(fold_in(key(t), torch.arange(rows)), x0.shape)
    x_t = q_sample(x0, torch.full((rows,), t), noise, table)
    ab = float(table[t])
    assert float(x_t.mean()) == pytest.approx(ab**0.5 * value, abs=0.02)
    assert float(x_t.var()) == pytest.approx(1 - ab, abs=0.03 * max(1 - ab, 0.05) + 1e-3)


def test_bad_schedules_are_refused_with_their_reason() -> None:
    with pytest.raises(ValueError, match="at least 1 step"):
        alphas_bar("linear", 0)
    with pytest.raises(ValueError, match="beta_start <= beta_end"):
        alphas_bar("linear", 10, 0.1, 0.01)
    with pytest.raises(ValueError, match="unknown noise schedule 'square'"):
        alphas_bar("square", 10)  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(total=st.integers(1, 1000), data=st.data())
def test_timesteps_descend_from_the_last_to_zero(total: int, data: st.DataObject) -> None:
    steps = data.draw(st.integers(1, total))
    picked = samplers.timesteps(total, steps)
    assert picked == sorted(set(picked), reverse=True)
    assert picked[-1] == 0 and (steps == 1 or picked[0] == total - 1)
    assert len(picked) == steps  # spacing (T-1)/(steps-1) >= 1: rounding merges none
    if steps == total:
        assert picked == list(range(total - 1, -1, -1))


def test_timesteps_outside_the_schedule_are_refused() -> None:
    with pytest.raises(ValueError, match="steps must be between 1 and 1000"):
        samplers.timesteps(1000, 0)
    with pytest.raises(ValueError, match="steps must be between 1 and 1000"):
        samplers.timesteps(1000, 1001)


def _toy_denoiser(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A stand-in model: a smooth function of its inputs, different per label and time."""
    shift = (labels.float() - 4.5).view(-1, 1, 1, 1) * 0.1
    return torch.tanh(x * (1 + t.float().view(-1, 1, 1, 1) / 1000) + shift)


def test_guidance_zero_is_the_conditional_prediction_alone() -> None:
    x = torch.randn(6, 1, 4, 4)
    t, labels = torch.full((6,), 300), torch.arange(6)
    calls: list[torch.Tensor] = []

    def counted(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(y)
        return _toy_denoiser(x, t, y)

    eps = samplers.guided(counted, 0.0, null_label=10)(x, t, labels)
    torch.testing.assert_close(eps, _toy_denoiser(x, t, labels), rtol=0, atol=0)
    assert len(calls) == 1 and bool((calls[0] != 10).all())  # no unconditional pass


def test_guidance_extrapolates_away_from_the_unconditional_prediction() -> None:
    x = torch.randn(4, 1, 4, 4)
    t, labels = torch.full((4,), 10), torch.tensor([1, 2, 3, 4])
    w = 2.5
    eps = samplers.guided(_toy_denoiser, w, null_label=10)(x, t, labels)
    conditional = _toy_denoiser(x, t, labels)
    unconditional = _toy_denoiser(x, t, torch.full_like(labels, 10))
    torch.testing.assert_close(eps, conditional + w * (conditional - unconditional))


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_an_image_does_not_depend_on_the_batch_it_was_drawn_in(kind: str) -> None:
    table = alphas_bar("linear", 100)
    labels = torch.arange(6) % 10
    common = dict(steps=10, seed=3, kind=kind, guidance=1.0, null_label=10)
    whole = samplers.sample(_toy_denoiser, table, labels, (1, 4, 4), **common)  # type: ignore[arg-type]
    tail = samplers.sample(
        _toy_denoiser,
        table,
        labels[4:],
        (1, 4, 4),
        first_index=4,
        **common,  # type: ignore[arg-type]
    )
    torch.testing.assert_close(whole[4:], tail, rtol=0, atol=0)
    assert whole.abs().max() <= 1.0
    other_seed = samplers.sample(
        _toy_denoiser,
        table,
        labels,
        (1, 4, 4),
        **{**common, "seed": 4},  # type: ignore[arg-type]
    )
    assert not torch.equal(whole, other_seed)


def test_ddim_is_deterministic_and_ddpm_adds_noise() -> None:
    table = alphas_bar("linear", 100)
    labels = torch.arange(3)
    args = dict(steps=20, seed=0, guidance=0.0, null_label=10)
    first = samplers.sample(_toy_denoiser, table, labels, (1, 4, 4), kind="ddim", **args)  # type: ignore[arg-type]
    again = samplers.sample(_toy_denoiser, table, labels, (1, 4, 4), kind="ddim", **args)  # type: ignore[arg-type]
    ddpm = samplers.sample(_toy_denoiser, table, labels, (1, 4, 4), kind="ddpm", **args)  # type: ignore[arg-type]
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, ddpm)


def test_ddim_with_a_perfect_denoiser_recovers_the_clean_image() -> None:
    """If the model knows x_0, one DDIM step from any t lands on x_0 exactly (the law DDIM's
    update is built on)."""
    table = alphas_bar("cosine", 50).float()
    x0 = torch.rand(2, 1, 3, 3) * 1.6 - 0.8

    def oracle(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ab = table[t].view(-1, 1, 1, 1)
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()

    out = samplers.sample(oracle, table, torch.zeros(2, dtype=torch.int64), (1, 3, 3),
                          steps=7, seed=1, null_label=10)  # fmt: skip
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


def test_compiled_ddim_gives_the_eager_images() -> None:
    table = alphas_bar("linear", 100)
    labels = torch.arange(4)
    args = dict(steps=8, seed=5, guidance=2.0, null_label=10)
    eager = samplers.sample(_toy_denoiser, table, labels, (1, 4, 4), **args)  # type: ignore[arg-type]
    compiled = samplers.sample(_toy_denoiser, table, labels, (1, 4, 4), compile=True, **args)  # type: ignore[arg-type]
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


def test_unknown_sampler_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown sampler 'euler'; valid: ddim, ddpm"):
        samplers.sample(_toy_denoiser, alphas_bar("linear", 10), torch.zeros(1, dtype=torch.int64),
                        (1, 2, 2), steps=2, seed=0, kind="euler", null_label=10)  # type: ignore[arg-type]  # fmt: skip
