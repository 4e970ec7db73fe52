"""VBench's dynamic degree (RAFT) and motion smoothness (AMT-S), per VBench-Long clip, streaming.

Dynamic degree, Vchitect/VBench@45e79ec1 ``vbench/dynamic_degree.py``: a clip's frames are sampled
every round(fps / 8) frames from its first frame; RAFT (20 iterations) runs on each consecutive pair
of sampled frames (0..255, replicate-padded to multiples of 8); a pair's score is the mean of the
largest int(0.05 * H * W) flow magnitudes of the padded flow; the clip is dynamic when at least
round(4 * n / 16) pairs (Python rounding, n = sampled frames) score above 6 * min(H, W) / 256 (the
unpadded frame) - with a count of 0, any one pair makes it dynamic. VBench-Long's score for a long
video is the share of dynamic 2 s clips (Vchitect/VBench@45e79ec1
``vbench2_beta_long/utils.py`` reorganize_clips_results).

Motion smoothness, Vchitect/VBench@45e79ec1 ``vbench/motion_smoothness.py``: the clip's even frames
(0, 2, 4, ...) in 0..1, replicate-padded to multiples of 16, are interpolated pairwise at t = 0.5 by
AMT-S; each prediction is cast back to uint8 by truncation ((x * 255).clip(0, 255).astype(uint8))
and compared with the odd frame it replaces by mean |difference| over pixels and channels (cv2.absdiff); the clip scores
(255 - mean of those) / 255, and a long video the mean over its clips.

Deviations: frames come from PyAV, VBench decodes them with OpenCV (same decoder library, FFmpeg;
the YUV -> RGB conversion can differ by a level); VBench-Long re-encodes every 2 s clip to MP4
before scoring it, memrope scores the decoded frames (see README, evaluation).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from memrope.eval.config import stride_for
from memrope.eval.flicker import PIXEL_MAX
from memrope.eval.spec import MetricSpec

# dynamic_degree.py: interval = max(1, round(fps / 8)); thres = 6 * scale / 256; count_num = round(4 * count / 16)
VBENCH_DYNAMIC_FPS = 8.0
TOP_FRACTION = 0.05
THRESHOLD_PX = 6.0
THRESHOLD_SIDE = 256.0
COUNT_PER_16 = 4.0
COUNT_FRAMES = 16.0
# motion_smoothness.py: InputPadder(..., divisor=16 / scale) with scale 1; embt = 1/2
AMT_DIVISOR = 16
AMT_TIME = 0.5

DYNAMIC_DEGREE = MetricSpec(
    name="dynamic_degree",
    implementation="vbench-exact:RAFT raft-things, 20 iters, ~8 fps per clip, top-5% |flow| > 6*min(H,W)/256 "
    "on round(4n/16) pairs;VBench-Long share of dynamic 2 s clips",
    unit="share of dynamic 2 s clips",
    description="VBench's dynamic degree: whether each 2 s clip moves; a long video that freezes loses it.",
    higher_is_better=True,
)
MOTION_SMOOTHNESS = MetricSpec(
    name="motion_smoothness",
    implementation="vbench-exact:AMT-S even-frame interpolation at t=0.5, (255-MAE(odd, uint8 prediction))/255;"
    "VBench-Long mean over 2 s clips",
    unit="score in [0, 1]",
    description="VBench's motion smoothness: how well a frame interpolator predicts the dropped odd frames.",
    higher_is_better=True,
)


def dynamic_threshold(height: int, width: int) -> float:
    return THRESHOLD_PX * min(height, width) / THRESHOLD_SIDE


def required_moving_pairs(n_frames: int) -> int:
    """VBench's count_num, with Python's round (half to even: 2 frames -> 0, 6 -> 2, 10 -> 2)."""
    return round(COUNT_PER_16 * (n_frames / COUNT_FRAMES))


def top_flow_score(flow: np.ndarray) -> float:
    """Mean of the int(0.05 * H * W) largest magnitudes of a (2, H, W) flow (NaN when that is 0, as VBench)."""
    rad = np.sqrt(np.square(flow[0]) + np.square(flow[1])).ravel()
    cut = int(rad.size * TOP_FRACTION)
    if cut == 0:
        return math.nan
    return float(np.partition(rad, rad.size - cut)[rad.size - cut :].mean())


def is_dynamic(scores: list[float], threshold: float, count_num: int) -> bool:
    """VBench's check_move: count pairs above the threshold, True as soon as the count reaches count_num."""
    count = 0
    for score in scores:
        if score > threshold:
            count += 1
        if count >= count_num:
            return True
    return False


def uint8_like_vbench(pred: torch.Tensor) -> np.ndarray:
    """AMT's tensor2img: (x * 255).clip(0, 255).astype(uint8) (truncation), HxWx3."""
    return (pred * 255.0).squeeze(0).permute(1, 2, 0).cpu().numpy().clip(0, 255).astype(np.uint8)


def smoothness_score(mean_abs_errors: list[float]) -> float:
    return (PIXEL_MAX - float(np.mean(mean_abs_errors))) / PIXEL_MAX if mean_abs_errors else math.nan


def _to_tensor(rgb: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().to(device)  # (1, 3, H, W)


class _PerClip:
    """Streams frames in time order; a new segment index starts a new clip (VBench-Long's 2 s clips)."""

    every_frame = True

    def __init__(self, provenance: dict | None = None) -> None:
        self._provenance = provenance or {}
        self._segment: int | None = None
        self._index = 0
        self.values: dict[int, float] = {}

    def add(self, segment: int, rgb: np.ndarray) -> None:
        if segment != self._segment:
            if self._segment is not None:
                self.values[self._segment] = self.close_clip()
            self._segment, self._index = segment, 0
            self.open_clip()
        self.frame(self._index, rgb)
        self._index += 1

    def finish(self, n_segments: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        if self._segment is not None:
            self.values[self._segment] = self.close_clip()
            self._segment = None
        per = np.full(n_segments, np.nan)
        for k, v in self.values.items():
            if k < n_segments:
                per[k] = v
        finite = per[np.isfinite(per)]
        return {self.specs[0].name: per}, {self.specs[0].name: float(finite.mean()) if finite.size else math.nan}

    def provenance(self) -> dict:
        return self._provenance

    def open_clip(self) -> None: ...

    def frame(self, index: int, rgb: np.ndarray) -> None: ...

    def close_clip(self) -> float: ...


class DynamicDegreeMetric(_PerClip):
    specs = (DYNAMIC_DEGREE,)

    def __init__(self, raft, fps: float, provenance: dict | None = None) -> None:
        super().__init__(provenance)
        from memrope.eval.nets.raft import pad_for_raft

        self.raft, self.pad = raft, pad_for_raft
        self.device = next(raft.parameters()).device
        self.interval = stride_for(fps, VBENCH_DYNAMIC_FPS)

    def open_clip(self) -> None:
        self._prev: torch.Tensor | None = None
        self._scores: list[float] = []
        self._sampled = 0
        self._threshold = math.nan

    def frame(self, index: int, rgb: np.ndarray) -> None:
        if index % self.interval:
            return
        self._sampled += 1
        current = _to_tensor(rgb, self.device)
        if self._prev is None:
            self._threshold = dynamic_threshold(*rgb.shape[:2])
        else:
            a, b = self.pad(self._prev, current)
            with torch.inference_mode():
                flow = self.raft(a, b)
            self._scores.append(top_flow_score(flow[0].float().cpu().numpy()))
        self._prev = current

    def close_clip(self) -> float:
        return float(is_dynamic(self._scores, self._threshold, required_moving_pairs(self._sampled)))


class MotionSmoothnessMetric(_PerClip):
    specs = (MOTION_SMOOTHNESS,)

    def __init__(self, amt, provenance: dict | None = None) -> None:
        super().__init__(provenance)
        from memrope.eval.nets.flow_common import pad_to_multiple, unpad

        self.amt, self.pad, self.unpad = amt, pad_to_multiple, unpad
        self.device = next(amt.parameters()).device
        self.embt = torch.full((1, 1, 1, 1), AMT_TIME, device=self.device)

    def open_clip(self) -> None:
        self._even: torch.Tensor | None = None
        self._odd: np.ndarray | None = None
        self._errors: list[float] = []

    def frame(self, index: int, rgb: np.ndarray) -> None:
        if index % 2:
            self._odd = rgb
            return
        current, pad = self.pad(_to_tensor(rgb, self.device) / PIXEL_MAX, AMT_DIVISOR)
        if self._even is not None:
            with torch.inference_mode():
                pred = self.unpad(self.amt(self._even, current, self.embt), pad)
            diff = np.abs(uint8_like_vbench(pred).astype(np.int16) - self._odd.astype(np.int16))
            self._errors.append(float(diff.mean()))
        self._even = current

    def close_clip(self) -> float:
        return smoothness_score(self._errors)
