"""Statistics a study's tables may show, sized to the number of paired units they rest on.

A unit is one (prompt, seed): every method generated it, so methods are compared on the per-unit
difference. What each n supports:

- the mean, always; an interval only from n >= 2: a Student-t interval below
  ``MIN_BOOTSTRAP_N`` units (the percentile bootstrap under-covers badly on a handful of values:
  with n = 2 it can only return the two values, and its coverage is below nominal well past n = 10,
  Efron & Tibshirani 1993, ch. 13), the percentile bootstrap of :mod:`memrope.eval.bootstrap` from
  there on; n = 1 has no interval, and says "n = 1";
- the paired test is the exact sign-flip permutation test of the mean difference
  (``scipy.stats.permutation_test``, ``permutation_type="samples"`` on one sample: every one of the
  2^n sign patterns when 2^n <= ``EXACT_MAX_PATTERNS``, else that many random ones). Its smallest
  attainable two-sided p is 2 / 2^n = 2^(1-n) (only the observed pattern and its mirror are as
  extreme), so two pairs can never give p below 0.5; the table shows that floor next to each p;
- Holm's step-down correction (Holm 1979) over every test of one table, so a table of many metrics
  does not find a difference by chance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from memrope.eval.bootstrap import DEFAULT_CONFIDENCE, bootstrap_mean_ci

MIN_BOOTSTRAP_N = 10
EXACT_MAX_PATTERNS = 1 << 14  # 2^14 sign patterns: exact up to n = 14 units
RANDOM_SEED = 0


@dataclass(frozen=True)
class Interval:
    """A mean with the interval its n supports (``kind`` is "t", "bootstrap" or "none" for n < 2)."""

    mean: float
    low: float
    high: float
    n: int
    kind: str

    def to_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "kind": self.kind}


@dataclass(frozen=True)
class PairedTest:
    """Mean of (a - b) over n units, its interval, the exact permutation p and the smallest p n allows."""

    difference: Interval
    p_value: float
    min_p: float
    exact: bool
    p_holm: float = math.nan

    def to_dict(self) -> dict:
        return {"difference": self.difference.to_dict(), "p": self.p_value, "min_p": self.min_p,
                "exact": self.exact, "p_holm": self.p_holm}


def _finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def mean_interval(values, confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """The mean, with no interval for n < 2, a t interval below MIN_BOOTSTRAP_N, a bootstrap one above."""
    v = _finite(values)
    if v.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "none")
    mean = float(v.mean())
    if v.size == 1:
        return Interval(mean, math.nan, math.nan, 1, "none")
    if v.size < MIN_BOOTSTRAP_N:
        sem = float(stats.sem(v))
        if sem == 0.0:
            return Interval(mean, mean, mean, int(v.size), "t")
        low, high = stats.t.interval(confidence, v.size - 1, loc=mean, scale=sem)
        return Interval(mean, float(low), float(high), int(v.size), "t")
    est = bootstrap_mean_ci(v, confidence)
    return Interval(mean, est.low, est.high, int(v.size), "bootstrap")


def min_attainable_p(n: int) -> float:
    """The smallest two-sided p of an exact sign-flip test on n units: 2^(1-n) (1 for n <= 1)."""
    return 1.0 if n <= 1 else min(1.0, 2.0 ** (1 - n))


def paired_test(a, b) -> PairedTest:
    """Exact (or, past 2^14 patterns, Monte-Carlo) sign-flip permutation test of mean(a - b) = 0."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"a paired test needs equal-length samples, got {a.size} and {b.size}")
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    n = int(d.size)
    interval = mean_interval(d)
    if n < 2:
        return PairedTest(interval, 1.0 if n else math.nan, min_attainable_p(n), True)
    if not np.any(d):
        return PairedTest(interval, 1.0, min_attainable_p(n), True)
    exact = 2 ** n <= EXACT_MAX_PATTERNS
    result = stats.permutation_test((d,), np.mean, permutation_type="samples", alternative="two-sided",
                                    n_resamples=EXACT_MAX_PATTERNS, random_state=RANDOM_SEED)
    p = float(min(1.0, max(result.pvalue, min_attainable_p(n) if exact else 0.0)))
    return PairedTest(interval, p, min_attainable_p(n), exact)


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values (NaNs kept as NaN and not counted in the family)."""
    idx = [i for i, p in enumerate(p_values) if math.isfinite(p)]
    m = len(idx)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out
