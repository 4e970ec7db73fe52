"""The drift protocol: summarise a per-segment curve by how, how fast and when it moves away.

VBench-Long averages 2 s clips, which hides slow drift; these numbers describe the curve itself:
first and last value, change, least-squares slope per minute, the largest drop between consecutive
segments (and when it happens), and the first time the curve crosses a threshold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

SECONDS_PER_MINUTE = 60.0


@dataclass(frozen=True)
class DriftSummary:
    """Summary of one metric's per-segment curve. Times are segment start times in seconds.

    largest_drop is max over j of value[j-1] - value[j] (a fall, whatever the metric's polarity);
    time_to_threshold is the start of the first segment at or past the threshold (None: never).
    """

    first: float
    last: float
    change: float
    slope_per_minute: float
    largest_drop: float
    largest_drop_time_s: float | None
    time_to_threshold_s: float | None
    threshold: float | None
    n_segments: int

    def to_dict(self) -> dict:
        return asdict(self)


def least_squares_slope(times_s: np.ndarray, values: np.ndarray) -> float:
    """Slope of the ordinary least-squares line through (time, value), per second; NaN if < 2 points."""
    t = np.asarray(times_s, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(t) & np.isfinite(v)
    t, v = t[ok], v[ok]
    if t.size < 2 or np.ptp(t) == 0:
        return math.nan
    tc = t - t.mean()
    return float(np.dot(tc, v - v.mean()) / np.dot(tc, tc))


def drift_summary(
    times_s: np.ndarray, values: np.ndarray, threshold: float | None = None, falling: bool = True
) -> DriftSummary:
    """Summarise a curve. With a threshold, `falling` says whether crossing means going at or below it
    (a score that degrades) or at or above it (an error or distance that grows). NaN segments are skipped.
    """
    t = np.asarray(times_s, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if t.shape != v.shape or t.ndim != 1:
        raise ValueError(f"times and values must be 1-D of equal length, got {t.shape} and {v.shape}")
    ok = np.isfinite(v)
    t, v = t[ok], v[ok]
    if v.size == 0:
        return DriftSummary(math.nan, math.nan, math.nan, math.nan, math.nan, None, None, threshold, 0)
    drops = v[:-1] - v[1:]
    if drops.size:
        j = int(np.argmax(drops))
        largest_drop, drop_time = float(drops[j]), float(t[j + 1])
    else:
        largest_drop, drop_time = 0.0, None
    crossing = None
    if threshold is not None:
        hits = np.nonzero(v <= threshold if falling else v >= threshold)[0]
        crossing = float(t[hits[0]]) if hits.size else None
    return DriftSummary(
        first=float(v[0]),
        last=float(v[-1]),
        change=float(v[-1] - v[0]),
        slope_per_minute=least_squares_slope(t, v) * SECONDS_PER_MINUTE,
        largest_drop=largest_drop,
        largest_drop_time_s=drop_time,
        time_to_threshold_s=crossing,
        threshold=threshold,
        n_segments=int(v.size),
    )
