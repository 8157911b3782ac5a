"""How good generated images are, as a judge classifier sees them (pure math, no I/O).

- `class_accuracy`: the share of class-conditional samples the judge assigns to the class they
  were asked for;
- `frechet_distance` between the judge's penultimate-layer features of two image sets: the
  Fréchet (2-Wasserstein) distance between Gaussians fitted to them, as FID computes it with an
  Inception net, here with the MNIST judge;
- `frechet_floor`: the same distance between real training images and the test images, what a
  perfect generator would score at the same N (the distance is biased upwards at finite N).

The judge is anything with `logits(images)` and `features(images)` (`craft.judge.Judge`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class JudgeLike(Protocol):
    """A classifier seen through its outputs: images `[N, C, H, W]` (uint8, or floats in
    [0, 1]) to logits `[N, classes]` and to penultimate features `[N, F]`."""

    def logits(self, images: torch.Tensor) -> torch.Tensor: ...

    def features(self, images: torch.Tensor) -> torch.Tensor: ...


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2) between feature
    sets `[N, F]` and `[M, F]`, in float64 (unbiased covariances, as numpy's `cov`).

    The matrix under the last square root is symmetric positive semi-definite, so its square
    root's trace is the sum of the square roots of its eigenvalues (`eigh`, tiny negative ones
    from rounding clamped to 0): no non-symmetric `sqrtm` and no complex parts to discard.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"features must be [N, F] with the same F, got {list(a.shape)} and {list(b.shape)}"
        )
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 rows per set for a covariance, got {len(a)}, {len(b)}")
    mean_a, cov_a = _moments(a)
    mean_b, cov_b = _moments(b)
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    eigenvalues = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0.0)
    distance = (
        (mean_a - mean_b).square().sum()
        + cov_a.trace()
        + cov_b.trace()
        - 2.0 * eigenvalues.sqrt().sum()
    )
    return max(float(distance), 0.0)  # a rounding error below 0 for (nearly) identical sets


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().to("cpu", torch.float64)
    mean = x.mean(0)
    centred = x - mean
    return mean, centred.T @ centred / (len(x) - 1)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    eigenvalues, vectors = torch.linalg.eigh(matrix)
    return (vectors * eigenvalues.clamp(min=0.0).sqrt()) @ vectors.T


def class_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of rows whose largest logit is their label's."""
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"logits must be [N, classes] and labels [N], got {list(logits.shape)} and "
            f"{list(labels.shape)}"
        )
    if len(labels) == 0:
        raise ValueError("no samples to score")
    return float((logits.argmax(-1) == labels.to(logits.device)).double().mean())


def sample_quality(
    judge: JudgeLike,
    samples: torch.Tensor,
    sample_labels: torch.Tensor,
    test_images: torch.Tensor,
    train_images: torch.Tensor,
) -> dict[str, float]:
    """The three numbers of a class-conditional generator: `class_accuracy` (of `samples`,
    asked for `sample_labels`), `frechet_distance` (samples against `test_images`) and
    `frechet_floor` (`train_images` against `test_images`). Compare distances at one N: give
    as many samples as training images."""
    test_features = judge.features(test_images)
    return {
        "class_accuracy": class_accuracy(judge.logits(samples), sample_labels),
        "frechet_distance": frechet_distance(judge.features(samples), test_features),
        "frechet_floor": frechet_distance(judge.features(train_images), test_features),
    }


def pick_evenly(
    images: np.ndarray, labels: np.ndarray, n: int, *, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` rows of a split (uint8 images `[N, C, H, W]`, labels `[N]`), as evenly over the
    classes as the split allows, drawn without replacement, in split order: `(images uint8,
    labels int64)`. The same (split, n, seed) gives the same rows.

    Each class gets n // classes rows (the first n % classes classes one more); a class with
    fewer rows than its share gives all it has and the others share the rest evenly (MNIST's
    test split has 892 fives, so n = 10,000 is the whole split).
    """
    # A copy: the splits are read-only memory maps, which torch warns about.
    labels_t = torch.from_numpy(np.array(labels, dtype=np.int64))
    if len(labels_t) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels_t)} labels")
    if not 0 < n <= len(labels_t):
        raise ValueError(f"cannot pick {n} images from a split of {len(labels_t)}")
    classes = torch.unique(labels_t)
    available = [int((labels_t == c).sum()) for c in classes]
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for c, quota in zip(classes, _quotas(available, n), strict=True):
        members = torch.nonzero(labels_t == c).flatten()
        rows.append(members[torch.randperm(len(members), generator=generator)[:quota]])
    picked = torch.cat(rows).sort().values.numpy()
    return torch.from_numpy(np.asarray(images[picked])), labels_t[picked]


def _quotas(available: list[int], n: int) -> list[int]:
    """Rows per class: equal shares, capped by what each class has, the rest shared again."""
    quotas = [0] * len(available)
    left = n
    while left > 0:
        open_ = [i for i, count in enumerate(available) if quotas[i] < count]
        share, extra = divmod(left, len(open_))
        for rank, i in enumerate(open_):
            take = min(share + (rank < extra), available[i] - quotas[i])
            quotas[i] += take
            left -= take
    return quotas
