"""Evaluation settings: one frozen, validated dataclass with the defaults and their sources.

Every knob that changes a number in `metrics.json` lives here, so a report can state exactly how it
was computed (the config is serialised next to the results).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

# VBench samples frames for optical-flow metrics at about 8 fps (dynamic_degree.py:
# interval = round(fps / 8)).
VBENCH_FLOW_FPS = 8.0
# VBench-Long cuts long videos into 2-second clips and averages clip scores.
VBENCH_LONG_CLIP_SECONDS = 2.0
# Short side of the frames optical flow runs on. 240 is 832x480 halved: DIS on 416x240 costs a few
# milliseconds per pair on one core, and VBench's dynamic-degree threshold scales with the short side,
# so the motion decision is (to first order) resolution independent.
DEFAULT_FLOW_SHORT_SIDE = 240
# Frames per second fed to the heavy networks (DINO, CLIP). VBench uses every frame of a 2 s clip;
# on hour-long videos that is ~10^5 ViT calls, so long runs subsample. None means every frame (exact).
DEFAULT_FEATURE_FPS = 2.0
# Frames per second at which small thumbnails are kept for the repetition metric and the heatmap.
DEFAULT_REPETITION_FPS = 2.0
# Two frames closer than this are never compared for repetition: neighbouring frames of any smooth
# video are similar, which is continuity, not a loop.
DEFAULT_REPETITION_MIN_LAG_SECONDS = 4.0
# Seam search range, in frames. Causal video models emit chunks of a few latent frames (Wan: 3 latent
# frames = 12 pixel frames at 16 fps), so periods 4..48 cover every chunking in use.
DEFAULT_SEAM_MIN_PERIOD = 4
DEFAULT_SEAM_MAX_PERIOD = 48


@dataclass(frozen=True)
class EvalConfig:
    """How a video is cut into segments and sampled for each family of metrics.

    segment_seconds: length of one drift segment (VBench-Long's clip length by default).
    flow_fps: rate of the frame pairs optical flow runs on (VBench: ~8 fps).
    flow_short_side: flow frames are downscaled so their short side is at most this many pixels.
    feature_fps: rate of the frames the DINO/CLIP networks see; None = every frame (VBench-exact).
    feature_batch: frames per network call (bounds memory).
    repetition_fps / repetition_min_lag_seconds: thumbnail rate and minimum lag for repetition.
    seam_period: known chunk length in frames; None searches seam_min_period..seam_max_period.
    thumbnails_per_minute: frames shown per minute in the thumbnail strip.
    max_seconds: evaluate only the first max_seconds of each video (None = all).
    """

    segment_seconds: float = VBENCH_LONG_CLIP_SECONDS
    flow_fps: float = VBENCH_FLOW_FPS
    flow_short_side: int = DEFAULT_FLOW_SHORT_SIDE
    feature_fps: float | None = DEFAULT_FEATURE_FPS
    feature_batch: int = 16
    repetition_fps: float = DEFAULT_REPETITION_FPS
    repetition_min_lag_seconds: float = DEFAULT_REPETITION_MIN_LAG_SECONDS
    seam_period: int | None = None
    seam_min_period: int = DEFAULT_SEAM_MIN_PERIOD
    seam_max_period: int = DEFAULT_SEAM_MAX_PERIOD
    thumbnails_per_minute: int = 1
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        _positive("segment_seconds", self.segment_seconds)
        _positive("flow_fps", self.flow_fps)
        _positive("repetition_fps", self.repetition_fps)
        if self.feature_fps is not None:
            _positive("feature_fps (or None for every frame)", self.feature_fps)
        if self.max_seconds is not None:
            _positive("max_seconds (or None for the whole video)", self.max_seconds)
        if self.flow_short_side < 16:
            raise ValueError(f"flow_short_side={self.flow_short_side}: use at least 16 pixels")
        if self.feature_batch < 1:
            raise ValueError(f"feature_batch={self.feature_batch}: must be >= 1")
        if self.repetition_min_lag_seconds < 0:
            raise ValueError("repetition_min_lag_seconds must be >= 0")
        if not 2 <= self.seam_min_period <= self.seam_max_period:
            raise ValueError(
                f"seam period range [{self.seam_min_period}, {self.seam_max_period}]: need 2 <= min <= max"
            )
        if self.seam_period is not None and self.seam_period < 2:
            raise ValueError(f"seam_period={self.seam_period}: a chunk has at least 2 frames")
        if self.thumbnails_per_minute < 1:
            raise ValueError("thumbnails_per_minute must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r}: must be a finite number > 0")


def stride_for(fps: float, target_fps: float | None) -> int:
    """Keep every k-th frame so that fps / k is close to target_fps (VBench: round(fps / 8))."""
    if target_fps is None:
        return 1
    return max(1, round(fps / target_fps))
