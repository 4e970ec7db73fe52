"""Across videos (prompts, seeds): mean with a bootstrap 95% CI, and paired comparisons of methods.

Each method is run on the same prompts and seeds, so the fair comparison is paired: resample prompts,
and look at the distribution of the mean per-prompt difference. Percentile bootstrap (Efron &
Tibshirani 1993), seeded so reports are reproducible.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_RESAMPLES = 10_000
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """Mean of a sample with its bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairedComparison:
    """Mean of (a - b) over paired samples, its CI, and the two-sided bootstrap p-value of 'no difference'."""

    label_a: str
    label_b: str
    difference: Estimate
    p_value: float

    def to_dict(self) -> dict:
        return {
            "a": self.label_a,
            "b": self.label_b,
            "difference": self.difference.to_dict(),
            "p_value": self.p_value,
        }


def _check(values: np.ndarray, confidence: float, n_resamples: int) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence}: must be in (0, 1)")
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    return v[np.isfinite(v)]


def _resampled_means(v: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_resamples, v.size))
    return v[idx].mean(axis=1)


def bootstrap_mean_ci(
    values, confidence: float = DEFAULT_CONFIDENCE, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> Estimate:
    """Percentile-bootstrap CI of the mean; NaNs are dropped; a single value gives a zero-width interval."""
    v = _check(values, confidence, n_resamples)
    if v.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, confidence)
    if v.size == 1:
        return Estimate(float(v[0]), float(v[0]), float(v[0]), 1, confidence)
    means = _resampled_means(v, n_resamples, seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Estimate(float(v.mean()), float(low), float(high), int(v.size), confidence)


def paired_bootstrap(
    a,
    b,
    label_a: str = "a",
    label_b: str = "b",
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> PairedComparison:
    """Compare two methods on the same prompts: bootstrap of the mean of per-prompt differences a - b.

    Pairs where either value is NaN are dropped. p_value = 2 * min(P(mean diff <= 0), P(>= 0)), capped at 1.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs equal-length samples, got {a.size} and {b.size}")
    ok = np.isfinite(a) & np.isfinite(b)
    diff = _check(a[ok] - b[ok], confidence, n_resamples)
    est = bootstrap_mean_ci(diff, confidence, n_resamples, seed)
    if diff.size < 2:
        return PairedComparison(label_a, label_b, est, math.nan)
    means = _resampled_means(diff, n_resamples, seed)
    p = min(1.0, 2 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    return PairedComparison(label_a, label_b, est, p)
