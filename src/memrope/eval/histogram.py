"""Colour-histogram drift: how far each segment's colour distribution has moved from the first one.

A 3-D RGB histogram per segment (8 bins per channel) is compared with segment 0 by the Bhattacharyya
distance (0 = same distribution, 1 = disjoint). It sees palette drift, colour casts and scene changes
without any network, and needs one 512-bin vector per segment.
"""

from __future__ import annotations

import cv2
import numpy as np

from memrope.eval.spec import MetricSpec

BINS_PER_CHANNEL = 8

HISTOGRAM_DRIFT = MetricSpec(
    name="histogram_drift",
    implementation=f"bhattacharyya(rgb hist {BINS_PER_CHANNEL}^3 of segment, of segment 0);cv2.compareHist",
    unit="distance in [0, 1]",
    description="Colour distribution change relative to the start of the video.",
    higher_is_better=False,
)


def colour_histogram(rgb: np.ndarray) -> np.ndarray:
    """Joint RGB histogram of one uint8 frame, float32, summing to 1."""
    hist = cv2.calcHist([rgb], [0, 1, 2], None, [BINS_PER_CHANNEL] * 3, [0, 256] * 3).ravel()
    return (hist / max(hist.sum(), 1.0)).astype(np.float32)


def histogram_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Bhattacharyya (Hellinger) distance between two histograms, normalised inside."""
    p = (p / max(float(p.sum()), 1e-12)).astype(np.float32)
    q = (q / max(float(q.sum()), 1e-12)).astype(np.float32)
    return float(cv2.compareHist(p, q, cv2.HISTCMP_BHATTACHARYYA))


class HistogramDrift:
    """Accumulates one histogram per segment; drift is computed at the end against segment 0."""

    def __init__(self) -> None:
        self._hists: dict[int, np.ndarray] = {}

    def add(self, segment: int, rgb: np.ndarray) -> None:
        h = colour_histogram(rgb)
        if segment in self._hists:
            self._hists[segment] += h
        else:
            self._hists[segment] = h

    def segment_values(self, n_segments: int) -> np.ndarray:
        out = np.full(n_segments, np.nan)
        if 0 not in self._hists:
            return out
        for k, h in self._hists.items():
            if k < n_segments:
                out[k] = histogram_distance(self._hists[0], h)
        return out
