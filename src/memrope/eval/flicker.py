"""Temporal flickering, VBench's formula: (255 - mean |f_t - f_{t+1}|) / 255 over all frame pairs.

1 for a perfectly still video; lower when pixel values change between consecutive frames, whether
from flicker, noise or motion (VBench applies it to near-static clips for that reason). The same
per-pair mean absolute difference also feeds the seam detector, so it is computed once per pair.
"""

from __future__ import annotations

import cv2
import numpy as np

from memrope.eval.spec import MetricSpec

# 8-bit pixel range used by VBench's formula.
PIXEL_MAX = 255.0

TEMPORAL_FLICKERING = MetricSpec(
    name="temporal_flickering",
    implementation="vbench-formula:(255-mean|f_t-f_t+1|)/255;rgb-uint8;every-frame",
    unit="score in [0, 1]",
    description="Frame-to-frame pixel stability; 1 = no change between consecutive frames.",
    higher_is_better=True,
)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 frames of the same shape, in 0..255 units."""
    if a.shape != b.shape:
        raise ValueError(f"frames differ in shape: {a.shape} vs {b.shape}")
    channels = 1 if a.ndim == 2 else a.shape[2]
    if channels > 4:
        raise ValueError(f"at most 4 channels supported, got {channels}")
    # cv2.mean averages each channel without numpy's float64 conversion of the whole frame (~10x faster);
    # channels have equal pixel counts, so the mean of channel means is the overall mean.
    return float(np.mean(cv2.mean(cv2.absdiff(a, b))[:channels]))


def flicker_score(mean_abs_difference):
    """VBench temporal flickering from a mean absolute frame difference (0..255); scalar or array."""
    return (PIXEL_MAX - mean_abs_difference) / PIXEL_MAX
