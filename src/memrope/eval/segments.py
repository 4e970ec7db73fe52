"""Per-segment running sums: the only state the streaming metrics keep (constant per segment).

A segment is the half-open time interval [k * L, (k + 1) * L) for segment length L seconds. A pair of
frames belongs to the segment of its later frame.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np


def segment_of(time_s: float, segment_seconds: float) -> int:
    """Index of the segment that contains time_s (with a tolerance for float round-off at boundaries)."""
    return int(math.floor(time_s / segment_seconds + 1e-9))


class SegmentMeans:
    """Sums and counts per (quantity, segment); means are formed only at the end."""

    def __init__(self) -> None:
        self._sum: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
        self._count: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))

    def add(self, name: str, segment: int, value: float, weight: int = 1) -> None:
        self._sum[name][segment] += float(value)
        self._count[name][segment] += weight

    def names(self) -> list[str]:
        return list(self._sum)

    def sums(self, name: str, n_segments: int) -> tuple[np.ndarray, np.ndarray]:
        """(sum, count) arrays of length n_segments; missing segments have count 0."""
        s = np.zeros(n_segments)
        c = np.zeros(n_segments, dtype=np.int64)
        for k, v in self._sum.get(name, {}).items():
            if k < n_segments:
                s[k] = v
                c[k] = self._count[name][k]
        return s, c

    def means(self, name: str, n_segments: int) -> np.ndarray:
        """Per-segment mean; NaN where the segment saw no value."""
        s, c = self.sums(name, n_segments)
        out = np.full(n_segments, np.nan)
        np.divide(s, c, out=out, where=c > 0)
        return out

    def pooled(self, name: str) -> float:
        """Mean over every value ever added (pooled over segments, weighted by count)."""
        total = sum(self._sum.get(name, {}).values())
        count = sum(self._count.get(name, {}).values())
        return total / count if count else math.nan
