"""One streaming pass over a video: every metric, per segment and whole, in constant memory.

Each decoded frame is seen once. Per pair of consecutive frames: the mean absolute difference
(flicker and seams). Every `flow_fps`-th frame: optical-flow motion metrics, image statistics and the
colour histogram. Every `repetition_fps`-th frame: a repetition thumbnail. Every `feature_fps`-th
frame: the optional DINO/CLIP metrics, batched inside their own objects; every frame: the metrics
that VBench defines on all frames of a clip (``every_frame``: imaging quality, dynamic degree, motion
smoothness, overall consistency), which sample within their clips as VBench does. What stays
in memory is a few frames plus a few numbers per segment (and per sampled frame for the time series).
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
from tqdm import tqdm

from memrope.eval.config import EvalConfig, stride_for
from memrope.eval.flicker import TEMPORAL_FLICKERING, flicker_score, mean_abs_diff
from memrope.eval.heap import fix_mmap_threshold
from memrope.eval.histogram import HISTOGRAM_DRIFT, HistogramDrift
from memrope.eval.image_stats import IMAGE_STAT_SPECS, SHARPNESS, colour_stats, sharpness
from memrope.eval.motion import MOTION_SPECS, MotionTracker
from memrope.eval.reader import VideoInfo, iter_frames, probe_video, scaled_size
from memrope.eval.repetition import PIXEL_ANCHOR_SIMILARITY, REPETITION, RepetitionTracker
from memrope.eval.seams import SEAM_SCORE, SeamEstimate, find_seam_period, seam_scores
from memrope.eval.segments import SegmentMeans, segment_of
from memrope.eval.spec import MetricSpec

# Height of the thumbnails kept for the per-minute strip in the report.
STRIP_THUMB_HEIGHT = 90
SECONDS_PER_MINUTE = 60.0

WEIGHT_FREE_SPECS: tuple[MetricSpec, ...] = (
    TEMPORAL_FLICKERING,
    *MOTION_SPECS,
    *IMAGE_STAT_SPECS,
    HISTOGRAM_DRIFT,
    SEAM_SCORE,
    REPETITION,
    PIXEL_ANCHOR_SIMILARITY,
)


class FrameFeatureMetric(Protocol):
    """A metric fed full-resolution RGB frames at `feature_fps` (the network-based ones), or every frame
    when it has ``every_frame = True``; ``frame_series()`` (optional) returns per-frame values."""

    specs: tuple[MetricSpec, ...]

    def add(self, segment: int, rgb: np.ndarray) -> None: ...

    def finish(self, n_segments: int) -> tuple[dict[str, np.ndarray], dict[str, float]]: ...

    def provenance(self) -> dict: ...


@dataclass
class VideoAnalysis:
    """Everything measured on one video. per_segment[name] has one value per segment (NaN = undefined)."""

    label: str
    info: VideoInfo
    config: EvalConfig
    segment_start_s: np.ndarray
    segment_end_s: np.ndarray
    per_segment: dict[str, np.ndarray]
    whole: dict[str, float]
    specs: dict[str, MetricSpec]
    seam: SeamEstimate
    similarity: np.ndarray
    motion_times_s: np.ndarray
    motion_values: np.ndarray
    thumbnails: list[tuple[float, np.ndarray]]
    seconds_evaluated: float
    elapsed_s: float
    skipped: dict[str, str] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    frame_series: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def n_segments(self) -> int:
        return len(self.segment_start_s)


def analyze_video(
    path: str | Path,
    config: EvalConfig | None = None,
    *,
    label: str | None = None,
    features: Sequence[FrameFeatureMetric] = (),
    progress: bool = False,
) -> VideoAnalysis:
    """Evaluate one video in a single lazy pass. `features` are optional network-based metrics."""
    config = config or EvalConfig()
    info = probe_video(path)
    fix_mmap_threshold()  # frame-sized buffers must not fragment the heap over an hour (heap.py)
    started = time.perf_counter()
    seg_len = config.segment_seconds
    flow_stride = stride_for(info.fps, config.flow_fps)
    rep_stride = stride_for(info.fps, config.repetition_fps)
    feat_stride = stride_for(info.fps, config.feature_fps)
    flow_size = scaled_size(info.width, info.height, config.flow_short_side)
    strip_size = scaled_size(info.width, info.height, STRIP_THUMB_HEIGHT)

    sums = SegmentMeans()
    motion = MotionTracker(min(info.width, info.height), min(flow_size), flow_stride)
    hist = HistogramDrift()
    repetition = RepetitionTracker(config.repetition_min_lag_seconds)
    diffs, diff_index, diff_segment = array("d"), array("q"), array("q")
    thumbnails: list[tuple[float, np.ndarray]] = []
    next_thumb_s = 0.0
    thumb_every_s = SECONDS_PER_MINUTE / config.thumbnails_per_minute
    prev: np.ndarray | None = None
    last_time = -1.0

    expected = info.frame_count or None
    if not expected and info.duration_s:  # fragmented MP4s and Matroska declare a duration, no frame count
        expected = round(info.duration_s * info.fps)
    if expected and config.max_seconds is not None:
        expected = min(expected, int(math.ceil(config.max_seconds * info.fps)))
    bar = tqdm(total=expected, unit="frame", desc=label or Path(path).name, disable=not progress)
    for frame in iter_frames(path, max_seconds=config.max_seconds):
        rgb, t = frame.rgb, frame.time_s
        seg = segment_of(t, seg_len)
        last_time = t
        if prev is not None:
            d = mean_abs_diff(prev, rgb)
            diffs.append(d)
            diff_index.append(frame.index)
            diff_segment.append(seg)
            sums.add("frame_diff", seg, d)
        if frame.index % flow_stride == 0 or frame.index % rep_stride == 0:
            gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            if frame.index % flow_stride == 0:
                small = (
                    cv2.resize(rgb, flow_size, interpolation=cv2.INTER_AREA)
                    if flow_size != rgb.shape[1::-1]
                    else rgb
                )
                small_gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
                motion.add(seg, t, small_gray)
                sums.add(SHARPNESS.name, seg, sharpness(gray))
                for name, value in colour_stats(small, small_gray).items():
                    sums.add(name, seg, value)
                hist.add(seg, small)
            if frame.index % rep_stride == 0:
                repetition.add(seg, t, gray)
        for metric in features:
            if getattr(metric, "every_frame", False) or frame.index % feat_stride == 0:
                metric.add(seg, rgb)
        if t >= next_thumb_s:
            thumbnails.append((t, cv2.resize(rgb, strip_size, interpolation=cv2.INTER_AREA)))
            next_thumb_s += thumb_every_s
        prev = rgb
        bar.update(1)
    bar.close()
    if last_time < 0:
        raise ValueError(f"{path}: no frames decoded")

    n_seg = segment_of(last_time, seg_len) + 1
    per_segment: dict[str, np.ndarray] = {}
    whole: dict[str, float] = {}
    specs: dict[str, MetricSpec] = {s.name: s for s in WEIGHT_FREE_SPECS}

    mean_diff = sums.means("frame_diff", n_seg)
    per_segment[TEMPORAL_FLICKERING.name] = flicker_score(mean_diff)
    whole[TEMPORAL_FLICKERING.name] = flicker_score(sums.pooled("frame_diff")) if diffs else math.nan

    motion_seg = motion.segment_values(n_seg)
    per_segment.update(motion_seg)
    whole.update(motion.whole_values(motion_seg))
    for spec in IMAGE_STAT_SPECS:
        per_segment[spec.name] = sums.means(spec.name, n_seg)
        whole[spec.name] = sums.pooled(spec.name)

    per_segment[HISTOGRAM_DRIFT.name] = hist.segment_values(n_seg)
    whole[HISTOGRAM_DRIFT.name] = _nanmean(per_segment[HISTOGRAM_DRIFT.name])

    d_arr, i_arr, s_arr = np.asarray(diffs), np.asarray(diff_index), np.asarray(diff_segment)
    seam = find_seam_period(d_arr, i_arr, config.seam_min_period, config.seam_max_period, config.seam_period)
    per_segment[SEAM_SCORE.name], whole[SEAM_SCORE.name] = seam_scores(d_arr, i_arr, s_arr, seam, n_seg)

    per_segment[REPETITION.name] = repetition.segment_values(n_seg)
    whole[REPETITION.name] = _nanmean(per_segment[REPETITION.name])
    similarity = repetition.similarity_matrix(n_seg)
    per_segment[PIXEL_ANCHOR_SIMILARITY.name] = similarity[0].copy()
    whole[PIXEL_ANCHOR_SIMILARITY.name] = _nanmean(similarity[0])

    provenance: dict = {}
    skipped: dict[str, str] = {}
    frame_series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for metric in features:
        seg_values, whole_values = metric.finish(n_seg)
        per_segment.update(seg_values)
        whole.update(whole_values)
        specs.update({s.name: s for s in metric.specs})
        provenance.update(metric.provenance())
        if hasattr(metric, "frame_series"):
            frame_series.update(metric.frame_series())

    starts = np.arange(n_seg) * seg_len
    ends = np.minimum(starts + seg_len, last_time + 1.0 / info.fps)
    return VideoAnalysis(
        label=label or Path(path).stem,
        info=info,
        config=config,
        segment_start_s=starts,
        segment_end_s=ends,
        per_segment=per_segment,
        whole=whole,
        specs=specs,
        seam=seam,
        similarity=similarity,
        motion_times_s=np.asarray(motion.pair_times),
        motion_values=np.asarray(motion.pair_magnitudes),
        thumbnails=thumbnails,
        seconds_evaluated=last_time + 1.0 / info.fps,
        elapsed_s=time.perf_counter() - started,
        skipped=skipped,
        provenance=provenance,
        frame_series=frame_series,
    )


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan
