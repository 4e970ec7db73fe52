"""Motion metrics from DIS optical flow on sampled, downscaled grey frames.

Named ``*_dis``: these are weight-free proxies. VBench's own dynamic degree (RAFT) and motion
smoothness (AMT-S) are `vbench_motion`, under VBench's names, and run when their weights are present.

- dynamic degree (VBench's rule with DIS instead of RAFT): a pair "moves" when the mean of its top 5%
  flow magnitudes exceeds 6 * min(H, W) / 256; a clip is dynamic when at least round(4 * n / 16) of
  its n sampled frames move. Per segment 0/1; the whole video is the mean over segments (VBench-Long).
- motion magnitude: mean flow length, in source-resolution pixels per source frame. Drift in motion
  (a video that slowly freezes) is one of the failure modes bounded caches are accused of.
- motion smoothness: VBench judges motion by how well a frame interpolator predicts the middle frame of
  a triple, (255 - MAE) / 255. Here the interpolator is the flow itself: the middle frame is predicted
  by warping both neighbours half-way along the flow between them. Exact for uniform translation.
- warp error: mean |a - b warped onto a| over pixels that pass the forward-backward consistency test
  (occlusions and out-of-frame pixels excluded), in 0..1 units; lower = temporally more coherent.
"""

from __future__ import annotations

import math

import numpy as np

from memrope.eval.flicker import PIXEL_MAX
from memrope.eval.flow import DisFlow, consistent_mask, magnitude, warp
from memrope.eval.segments import SegmentMeans
from memrope.eval.spec import MetricSpec

# VBench dynamic_degree.py: top 5% of flow magnitudes, threshold 6 px per 256 px of short side,
# and round(4 * frames / 16) moving pairs needed.
VBENCH_TOP_FRACTION = 0.05
VBENCH_THRESHOLD_PX_PER_256 = 6.0
VBENCH_REFERENCE_SIDE = 256.0
VBENCH_COUNT_PER_16_FRAMES = 4.0
VBENCH_COUNT_REFERENCE_FRAMES = 16.0

DYNAMIC_DEGREE = MetricSpec(
    name="dynamic_degree_dis",
    implementation="vbench-rule(top5%>6*min(H,W)/256, round(4n/16) pairs);flow=cv2-DIS;mean-over-segments",
    unit="fraction of segments that are dynamic",
    description="Whether the video moves at all; a long video that freezes loses it segment by segment.",
    higher_is_better=True,
)
MOTION_MAGNITUDE = MetricSpec(
    name="motion_magnitude",
    implementation="mean|DIS flow|;source px per frame",
    unit="pixels per frame (source resolution)",
    description="How much moves, on average; a falling curve is motion dying out over time.",
    higher_is_better=None,
)
MOTION_SMOOTHNESS = MetricSpec(
    name="motion_smoothness_dis",
    implementation="(255-MAE(f_t, half-way DIS warp of f_t-1 and f_t+1))/255;grey",
    unit="score in [0, 1]",
    description="How well each frame is predicted by interpolating its neighbours; jerky motion scores low.",
    higher_is_better=True,
)
WARP_ERROR = MetricSpec(
    name="warp_error",
    implementation="mean|f_t - warp(f_t+1, DIS)|/255 over forward-backward-consistent pixels (Sundaram 2010)",
    unit="mean absolute grey error in [0, 1]",
    description="Temporal incoherence not explained by motion: texture boiling, popping, identity swaps.",
    higher_is_better=False,
)
FLOW_CONSISTENT_FRACTION = MetricSpec(
    name="flow_consistent_fraction",
    implementation="fraction of pixels passing forward-backward consistency (alpha 0.01, beta 0.5)",
    unit="fraction in [0, 1]",
    description="Share of the frame the warp error is measured on; low = occlusion or flow failure.",
    higher_is_better=None,
)

MOTION_SPECS = (DYNAMIC_DEGREE, MOTION_MAGNITUDE, MOTION_SMOOTHNESS, WARP_ERROR, FLOW_CONSISTENT_FRACTION)


def top_fraction_mean(values: np.ndarray, fraction: float = VBENCH_TOP_FRACTION) -> float:
    """Mean of the largest `fraction` of the values (VBench's per-pair motion score)."""
    flat = values.ravel()
    k = max(1, int(flat.size * fraction))
    return float(np.partition(flat, flat.size - k)[flat.size - k :].mean())


def dynamic_threshold(height: int, width: int) -> float:
    """VBench's per-pair motion threshold in pixels of the frames the flow was computed on."""
    return VBENCH_THRESHOLD_PX_PER_256 * min(height, width) / VBENCH_REFERENCE_SIDE


def required_moving_pairs(n_frames: int) -> int:
    """VBench's count_num = round(4 * n / 16); at least 1 so a one-pair clip needs one moving pair."""
    return max(1, round(VBENCH_COUNT_PER_16_FRAMES * n_frames / VBENCH_COUNT_REFERENCE_FRAMES))


class MotionTracker:
    """Consumes sampled grey frames in order and accumulates the motion metrics per segment.

    Holds only the two previous grey frames; per-pair motion magnitudes are also kept as a time
    series (one float per sampled pair) for the motion-vs-time plot.
    """

    def __init__(
        self, source_short_side: int, flow_short_side: int, frames_per_sample: int, preset: str = "fast"
    ) -> None:
        if frames_per_sample < 1:
            raise ValueError("frames_per_sample must be >= 1")
        self.flow = DisFlow(preset)
        self.to_source_px_per_frame = source_short_side / flow_short_side / frames_per_sample
        self.sums = SegmentMeans()
        self.pair_times: list[float] = []
        self.pair_magnitudes: list[float] = []
        self._prev: np.ndarray | None = None
        self._prev2: np.ndarray | None = None
        self._frames_in_segment: dict[int, int] = {}

    def add(self, segment: int, time_s: float, gray: np.ndarray) -> None:
        self._frames_in_segment[segment] = self._frames_in_segment.get(segment, 0) + 1
        prev, prev2 = self._prev, self._prev2
        if prev is not None:
            self._pair(segment, time_s, prev, gray)
        if prev2 is not None and prev is not None:
            self._triple(segment, prev2, prev, gray)
        self._prev2, self._prev = prev, gray

    def _pair(self, segment: int, time_s: float, a: np.ndarray, b: np.ndarray) -> None:
        forward = self.flow(a, b)
        backward = self.flow(b, a)
        mag = magnitude(forward)
        moving = top_fraction_mean(mag) > dynamic_threshold(*a.shape)
        self.sums.add("moving_pairs", segment, float(moving))
        mean_mag = float(mag.mean()) * self.to_source_px_per_frame
        self.sums.add(MOTION_MAGNITUDE.name, segment, mean_mag)
        self.pair_times.append(time_s)
        self.pair_magnitudes.append(mean_mag)
        warped, _ = warp(b, forward)
        mask = consistent_mask(forward, backward)
        self.sums.add(FLOW_CONSISTENT_FRACTION.name, segment, float(mask.mean()))
        if mask.any():
            err = np.abs(a.astype(np.float32) - warped.astype(np.float32))[mask].mean() / PIXEL_MAX
            self.sums.add(WARP_ERROR.name, segment, float(err))

    def _triple(self, segment: int, a: np.ndarray, mid: np.ndarray, c: np.ndarray) -> None:
        skip = self.flow(c, a)  # c(x) ~= a(x + skip(x))
        from_a, _ = warp(a, 0.5 * skip)
        from_c, _ = warp(c, -0.5 * skip)
        predicted = 0.5 * (from_a.astype(np.float32) + from_c.astype(np.float32))
        mae = float(np.abs(predicted - mid.astype(np.float32)).mean())
        self.sums.add(MOTION_SMOOTHNESS.name, segment, (PIXEL_MAX - mae) / PIXEL_MAX)

    def segment_values(self, n_segments: int) -> dict[str, np.ndarray]:
        moving, pairs = self.sums.sums("moving_pairs", n_segments)
        dynamic = np.full(n_segments, np.nan)
        for k in range(n_segments):
            if pairs[k] > 0:
                # frames seen by the clip = its pairs + 1 (VBench counts frames, not pairs)
                dynamic[k] = float(moving[k] >= required_moving_pairs(int(pairs[k]) + 1))
        out = {DYNAMIC_DEGREE.name: dynamic}
        for spec in MOTION_SPECS[1:]:
            out[spec.name] = self.sums.means(spec.name, n_segments)
        return out

    def whole_values(self, per_segment: dict[str, np.ndarray]) -> dict[str, float]:
        dyn = per_segment[DYNAMIC_DEGREE.name]
        out = {DYNAMIC_DEGREE.name: float(np.nanmean(dyn)) if np.isfinite(dyn).any() else math.nan}
        for spec in MOTION_SPECS[1:]:
            out[spec.name] = self.sums.pooled(spec.name)
        return out
