"""Seams at chunk boundaries: periodic spikes in the frame-difference series.

A chunked generator that does not carry its state across chunks (or a VAE decoded chunk by chunk
without its causal cache) leaves a visible jump every `period` frames. The detector normalises each
frame difference by the median of its neighbours (so motion level does not matter), folds the
normalised series by every candidate period, and picks the period whose best phase stands out most
above the other phases. The seam score of a segment is then mean spike at seam pairs / elsewhere:
1 means no seams, 2 means boundary jumps twice the size of ordinary frame changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from memrope.eval.spec import MetricSpec

# Neighbours on each side used to normalise a frame difference (a window of 7 pairs).
SPIKE_HALF_WINDOW = 3
# Added to differences (0..255 units) so a perfectly still video gives ratios of 1, not 0/0.
SPIKE_EPSILON = 1e-3
# A period is reported as detected when its seam phase is at least this many times the other
# phases' median; below that the folded series is indistinguishable from noise.
SEAM_DETECTION_CONTRAST = 1.5
# Among periods whose t statistic is almost as high as the best one, the shortest is taken.
PERIOD_TIE_FRACTION = 0.9

SEAM_SCORE = MetricSpec(
    name="seam_score",
    implementation="mean(spike at seam phase)/mean(spike elsewhere);spike=d_t/median(d_t-3..t+3)",
    unit="ratio (1 = no seam)",
    description="Visible jumps at chunk boundaries; stays 1 for a seamless stream.",
    higher_is_better=False,
)


@dataclass(frozen=True)
class SeamEstimate:
    """Detected chunk period (frames), phase (frame index mod period of the first frame after a seam),
    its contrast, and whether the contrast clears SEAM_DETECTION_CONTRAST."""

    period: int
    phase: int
    contrast: float
    detected: bool

    def to_dict(self) -> dict:
        return {
            "period": self.period,
            "phase": self.phase,
            "contrast": self.contrast,
            "detected": self.detected,
        }


def spike_series(diffs: np.ndarray, half_window: int = SPIKE_HALF_WINDOW) -> np.ndarray:
    """Each difference divided by the median of its neighbours (itself excluded)."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size < 2:
        return np.ones(d.size)
    padded = np.pad(d, half_window, constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half_window + 1)  # (n, 2w+1)
    neighbours = np.delete(windows, half_window, axis=1)  # (n, 2w): centre removed
    return (d + SPIKE_EPSILON) / (np.nanmedian(neighbours, axis=1) + SPIKE_EPSILON)


def _fold(spikes: np.ndarray, frame_index: np.ndarray, period: int) -> tuple[int, float, float]:
    """Best phase of a period, its contrast (phase mean / median of the other phases' means) and its
    Welch t statistic (seam-phase spikes against all other spikes)."""
    phases = frame_index % period
    means = np.array([spikes[phases == p].mean() if np.any(phases == p) else np.nan for p in range(period)])
    best = int(np.nanargmax(means))
    others = np.delete(means, best)
    others = others[np.isfinite(others)]
    if others.size == 0:
        return best, 1.0, 0.0
    contrast = float(means[best] / max(np.median(others), SPIKE_EPSILON))
    seam, rest = spikes[phases == best], spikes[phases != best]
    spread = np.sqrt(seam.var() / seam.size + rest.var() / rest.size) + SPIKE_EPSILON
    return best, contrast, float((seam.mean() - rest.mean()) / spread)


def find_seam_period(
    diffs: np.ndarray, frame_index: np.ndarray, min_period: int, max_period: int, period: int | None = None
) -> SeamEstimate:
    """Estimate the chunk period from per-pair differences.

    diffs[i] is the mean |f_{k-1} - f_k| of the pair ending at frame k = frame_index[i].
    The period is chosen by the Welch t statistic of its seam phase: a multiple of the true period
    selects a subset of the same seams (same contrast, fewer samples, lower t) and a divisor mixes
    seams with ordinary frames (lower contrast); near-ties go to the shortest period.
    With `period` given only the phase is searched. Needs at least two full periods of pairs.
    """
    diffs = np.asarray(diffs, dtype=np.float64)
    frame_index = np.asarray(frame_index, dtype=np.int64)
    if diffs.shape != frame_index.shape:
        raise ValueError("diffs and frame_index must have the same length")
    spikes = spike_series(diffs)
    candidates = [period] if period is not None else list(range(min_period, max_period + 1))
    candidates = [p for p in candidates if 2 * p <= diffs.size]
    if not candidates:
        return SeamEstimate(period=period or 0, phase=0, contrast=1.0, detected=False)
    scored = [(p, *_fold(spikes, frame_index, p)) for p in candidates]
    best_t = max(s[3] for s in scored)
    p, phase, contrast, _ = next(s for s in scored if s[3] >= PERIOD_TIE_FRACTION * best_t)
    return SeamEstimate(
        period=p, phase=phase, contrast=contrast, detected=contrast >= SEAM_DETECTION_CONTRAST
    )


def seam_scores(
    diffs: np.ndarray, frame_index: np.ndarray, segments: np.ndarray, estimate: SeamEstimate, n_segments: int
) -> tuple[np.ndarray, float]:
    """Per-segment and whole-video seam score for a given period and phase (NaN where undefined)."""
    per_segment = np.full(n_segments, np.nan)
    if estimate.period < 2 or len(diffs) == 0:
        return per_segment, math.nan
    spikes = spike_series(np.asarray(diffs, dtype=np.float64))
    at_seam = (np.asarray(frame_index) % estimate.period) == estimate.phase
    segments = np.asarray(segments)

    def ratio(mask: np.ndarray) -> float:
        seam, rest = spikes[mask & at_seam], spikes[mask & ~at_seam]
        return float(seam.mean() / rest.mean()) if seam.size and rest.size else math.nan

    for k in range(n_segments):
        per_segment[k] = ratio(segments == k)
    return per_segment, ratio(np.ones_like(at_seam))
