"""The Fréchet distance's laws and closed forms, class accuracy, and picking images evenly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from craft.tasks.sample_quality import (
    class_accuracy,
    frechet_distance,
    pick_evenly,
    sample_quality,
)


def gaussian(seed: int, n: int, f: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(f, f, generator=generator, dtype=torch.float64)
    return shift + scale * torch.randn(n, f, generator=generator, dtype=torch.float64) @ mixing


def with_moments(seed: int, n: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """`n` rows whose sample mean is `mean` and sample covariance exactly diag(std^2)."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, len(mean), generator=generator, dtype=torch.float64)
    z = z - z.mean(0)
    chol = torch.linalg.cholesky(z.T @ z / (n - 1))
    white = torch.linalg.solve_triangular(chol, z.T, upper=False).T  # sample covariance I
    return mean + white * std


def close(a: float, b: float, scale: float) -> bool:
    return abs(a - b) <= 1e-7 * (1.0 + scale)


sets = st.tuples(
    st.integers(0, 2**31 - 1),  # seed
    st.integers(2, 40),  # rows
    st.integers(1, 12),  # features (more than rows: singular covariances)
    st.floats(1e-3, 1e3),  # scale
)


@settings(max_examples=60, deadline=None)
@given(sets)
def test_a_set_is_at_distance_zero_from_itself(drawn: tuple[int, int, int, float]) -> None:
    seed, n, f, scale = drawn
    a = gaussian(seed, n, f, scale)
    trace = float(torch.cov(a.T).trace()) if f > 1 else float(a.var())
    assert frechet_distance(a, a) <= 1e-6 * (1.0 + trace)
    # A float32 copy of the same rows: zero up to float32 rounding.
    assert frechet_distance(a.float(), a) <= 1e-5 * (1.0 + trace)


@settings(max_examples=60, deadline=None)
@given(sets, st.integers(2, 40), st.floats(-10, 10))
def test_symmetric_non_negative_and_blind_to_row_order(
    drawn: tuple[int, int, int, float], m: int, shift: float
) -> None:
    seed, n, f, scale = drawn
    a, b = gaussian(seed, n, f, scale), gaussian(seed + 1, m, f, scale * 2, shift)
    distance = frechet_distance(a, b)
    assert distance >= 0.0
    size = float((a.square().sum() + b.square().sum()) / min(n, m))
    assert close(frechet_distance(b, a), distance, size)
    permuted = a[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]
    assert close(frechet_distance(permuted, b), distance, size)
    # Moving both sets together, or rotating both, changes nothing.
    rotation, _ = torch.linalg.qr(gaussian(seed + 2, f, f))
    assert close(frechet_distance(a + 3.0, b + 3.0), distance, size)
    assert close(frechet_distance(a @ rotation, b @ rotation), distance, size)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 8),
    st.lists(st.floats(0.05, 20), min_size=16, max_size=16),
    st.lists(st.floats(-5, 5), min_size=16, max_size=16),
)
def test_matches_the_closed_form_of_two_gaussians(
    seed: int, f: int, stds: list[float], means: list[float]
) -> None:
    """Diagonal covariances commute: the distance is |mu1 - mu2|^2 + sum (s1 - s2)^2; rotated
    into a common non-diagonal basis, the same."""
    std_a, std_b = torch.tensor(stds, dtype=torch.float64).view(2, 8)[:, :f]
    mean_a, mean_b = torch.tensor(means, dtype=torch.float64).view(2, 8)[:, :f]
    a = with_moments(seed, 3 * f + 5, mean_a, std_a)
    b = with_moments(seed + 1, 2 * f + 7, mean_b, std_b)
    expected = float((mean_a - mean_b).square().sum() + (std_a - std_b).square().sum())
    scale = float(std_a.square().sum() + std_b.square().sum() + mean_a.square().sum())
    assert close(frechet_distance(a, b), expected, scale)
    rotation, _ = torch.linalg.qr(gaussian(seed, f, f))
    assert close(frechet_distance(a @ rotation, b @ rotation), expected, scale)


def test_shifting_one_set_adds_the_squared_shift() -> None:
    a = gaussian(0, 50, 6)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 1.0], dtype=torch.float64)
    assert frechet_distance(a + shift, a) == pytest.approx(float(shift.square().sum()), rel=1e-9)


def test_bad_feature_sets_are_refused() -> None:
    with pytest.raises(ValueError, match=r"same F, got \[5, 3\] and \[5, 4\]"):
        frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="at least 2 rows per set"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))


def test_class_accuracy() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0], [0.0, 5.0, 1.0], [1.0, 0.0, 0.0]])
    assert class_accuracy(logits, torch.tensor([0, 2, 1, 2])) == 0.75
    assert class_accuracy(logits, torch.tensor([1, 1, 0, 1])) == 0.0
    with pytest.raises(ValueError, match=r"labels \[N\], got \[4, 3\] and \[3\]"):
        class_accuracy(logits, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="no samples"):
        class_accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64))


def split(counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 split whose image i holds the value i % 256 (to tell rows apart)."""
    labels = np.concatenate([np.full(count, c, dtype=np.uint8) for c, count in enumerate(counts)])
    labels = np.random.default_rng(0).permutation(labels)
    images = (np.arange(len(labels)) % 256).astype(np.uint8)[:, None, None, None]
    return np.broadcast_to(images, (len(labels), 1, 2, 2)).copy(), labels


def test_pick_evenly_balances_the_classes_and_follows_the_seed() -> None:
    images, labels = split([30, 25, 40, 31])
    picked, picked_labels = pick_evenly(images, labels, 42, seed=3)
    assert picked.dtype == torch.uint8 and picked_labels.dtype == torch.int64
    assert torch.bincount(picked_labels).tolist() == [11, 11, 10, 10]
    rows = picked[:, 0, 0, 0].long()
    assert len(set(rows.tolist())) == 42  # no row twice
    assert torch.equal(torch.from_numpy(labels[rows.numpy()]).long(), picked_labels)
    again, _ = pick_evenly(images, labels, 42, seed=3)
    other, _ = pick_evenly(images, labels, 42, seed=4)
    assert torch.equal(picked, again) and not torch.equal(picked, other)


def test_pick_evenly_shares_what_a_small_class_lacks() -> None:
    images, labels = split([5, 50, 50, 8])
    _, picked_labels = pick_evenly(images, labels, 60, seed=0)
    assert torch.bincount(picked_labels).tolist() == [5, 24, 23, 8]
    _, everything = pick_evenly(images, labels, 113, seed=0)
    assert torch.bincount(everything).tolist() == [5, 50, 50, 8]
    with pytest.raises(ValueError, match="cannot pick 114 images from a split of 113"):
        pick_evenly(images, labels, 114, seed=0)


class FakeJudge:
    """Features are the pixels; the logits say 'class 1' for bright images, else 'class 0'."""

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1).float() / 255.0

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        bright = images.flatten(1).float().mean(1) > 127
        return torch.stack([(~bright).float(), bright.float()], 1)


def test_sample_quality_names_the_three_numbers() -> None:
    generator = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (40, 1, 2, 2), generator=generator, dtype=torch.uint8)
    test = torch.randint(0, 256, (40, 1, 2, 2), generator=generator, dtype=torch.uint8)
    samples = torch.full((40, 1, 2, 2), 200, dtype=torch.uint8)
    samples[:10] = 10
    labels = torch.ones(40, dtype=torch.int64)
    result = sample_quality(FakeJudge(), samples, labels, test, train)
    assert result["class_accuracy"] == 0.75
    judge = FakeJudge()
    assert result["frechet_floor"] == frechet_distance(judge.features(train), judge.features(test))
    assert result["frechet_distance"] > result["frechet_floor"]  # two values, far from the test
    perfect = sample_quality(FakeJudge(), train, labels, test, train)
    assert perfect["frechet_distance"] == perfect["frechet_floor"]
