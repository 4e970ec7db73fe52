"""VBench's imaging quality (MUSIQ, SPAQ weights) and overall consistency (ViCLIP), streaming.

Imaging quality, Vchitect/VBench@45e79ec1 ``vbench/imaging_quality.py`` with its default
``imaging_quality_preprocessing_mode='longer'``: frames as float tensors 0..255 (``load_video``
converts to float before any transform), resized when the longer side exceeds 512 to
(int(s * H), int(s * W)) with s = 512 / max(H, W) (bilinear, no antialias, no rounding back to uint8),
divided by 255, scored one by one by MUSIQ; a clip's score is the mean over its frames and the
dimension is that / 100. VBench-Long: the mean of the clip scores (then / 100).

Overall consistency, Vchitect/VBench@45e79ec1 ``vbench/overall_consistency.py``: 8 frames of a clip
at the middle of 8 equal intervals (``get_frame_indices(8, n, 'middle')``; the last index repeated
when n < 8), CLIP's transform (bicubic resize of the short side to 224 on uint8 frames, centre crop, CLIP
normalisation), ViCLIP's video embedding against the text embedding of the clip's prompt, both
normalised: the cosine. VBench-Long's default clip length for this dimension is 10 s
(``vbench2_beta_long/configs/clip_length_mix.yaml``), not 2 s: ViCLIP was trained on longer clips.

Deviations: MUSIQ runs on batches of frames (one forward per frame in VBench; the same numbers to
float rounding); a clip's prompt is the prompt in force at the clip's start (VBench-Long videos have
one prompt); frames from PyAV rather than decord (see README, evaluation).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from memrope.eval.preprocess import clip_crops, clip_normalise
from memrope.eval.spec import MetricSpec

# imaging_quality.py: 'longer' mode resizes when max(h, w) > 512; the dimension is the score / 100
MUSIQ_LONGER_SIDE = 512
MUSIQ_SCALE = 100.0
PIXEL_MAX = 255.0
# overall_consistency.py: read_frames_decord_by_fps(num_frames=8, sample='middle'); clip_transform(224)
VICLIP_FRAMES = 8
# vbench2_beta_long/configs/clip_length_mix.yaml: overall_consistency: 10.0
VBENCH_LONG_TEXT_CLIP_SECONDS = 10.0

IMAGING_QUALITY = MetricSpec(
    name="imaging_quality",
    implementation="vbench-exact:MUSIQ (pyiqa, SPAQ) per frame, longer side <= 512 (bilinear, float), /100;"
    "VBench-Long mean over 2 s clips",
    unit="score, about 0..1",
    description="VBench's imaging quality: technical quality (noise, blur, exposure) of every frame.",
    higher_is_better=True,
)
OVERALL_CONSISTENCY = MetricSpec(
    name="overall_consistency",
    implementation="vbench-exact:ViCLIP-L/14 InternVid-10M-FLT, 8 middle frames per clip, CLIP transform, "
    "cos(video, prompt);VBench-Long 10 s clips",
    unit="cosine",
    description="VBench's overall consistency: how well each clip matches its text prompt.",
    higher_is_better=True,
)


def musiq_inputs(rgb: np.ndarray, longer: int = MUSIQ_LONGER_SIDE) -> torch.Tensor:
    """VBench's 'longer' transform of one uint8 frame: (1, 3, h, w) float in 0..1."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
    h, w = x.shape[2:]
    if max(h, w) > longer:
        scale = longer / max(h, w)
        x = F.interpolate(x, size=(int(scale * h), int(scale * w)), mode="bilinear", align_corners=False,
                          antialias=False)
    return x / PIXEL_MAX


def middle_frame_indices(n_frames: int, num: int = VICLIP_FRAMES) -> list[int]:
    """get_frame_indices(num, n, sample='middle'): the middle of each of min(num, n) equal intervals."""
    acc = min(num, n_frames)
    edges = np.linspace(start=0, stop=n_frames, num=acc + 1).astype(int)
    idx = [int((edges[i] + edges[i + 1] - 1) // 2) for i in range(acc)]
    return idx + [idx[-1]] * (num - len(idx))


class ImagingQualityMetric:
    """MUSIQ per frame (batched), mean per clip; keeps the per-frame scores (one float a frame) for the
    exact first/last-5-s quality drift and LV-Bench chunks."""

    specs = (IMAGING_QUALITY,)
    every_frame = True

    def __init__(self, musiq, fps: float, batch: int, provenance: dict | None = None) -> None:
        self.musiq, self.fps, self.batch = musiq, fps, batch
        self._provenance = provenance or {}
        self.device = next(musiq.parameters()).device
        self._pending: list[tuple[int, torch.Tensor]] = []
        self._sums: dict[int, float] = {}
        self._counts: dict[int, int] = {}
        self.frame_scores = array("d")

    def add(self, segment: int, rgb: np.ndarray) -> None:
        self._pending.append((segment, musiq_inputs(rgb)))
        if len(self._pending) >= self.batch:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        with torch.inference_mode():
            scores = self.musiq(torch.cat([x for _, x in self._pending]).to(self.device)).float().cpu()
        for (segment, _), s in zip(self._pending, scores.tolist()):
            self.frame_scores.append(s / MUSIQ_SCALE)
            self._sums[segment] = self._sums.get(segment, 0.0) + s
            self._counts[segment] = self._counts.get(segment, 0) + 1
        self._pending = []

    def finish(self, n_segments: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        self._flush()
        per = np.full(n_segments, np.nan)
        for k, c in self._counts.items():
            if k < n_segments:
                per[k] = self._sums[k] / c / MUSIQ_SCALE
        finite = per[np.isfinite(per)]
        return {IMAGING_QUALITY.name: per}, {IMAGING_QUALITY.name: float(finite.mean()) if finite.size else math.nan}

    def provenance(self) -> dict:
        return self._provenance

    def frame_series(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        values = np.asarray(self.frame_scores)
        return {IMAGING_QUALITY.name: (np.arange(values.size) / self.fps, values)}


TextFor = Callable[[float], str]


class OverallConsistencyMetric:
    """ViCLIP per clip of `clip_seconds`; a clip keeps the uint8 224 x 224 crops of its frames until it
    ends, because which 8 frames it uses depends on its length."""

    specs = (OVERALL_CONSISTENCY,)
    every_frame = True

    def __init__(self, viclip, tokenizer, text_for: TextFor, fps: float,
                 clip_seconds: float = VBENCH_LONG_TEXT_CLIP_SECONDS, provenance: dict | None = None) -> None:
        self._provenance = provenance or {}
        self.viclip, self.tokenizer, self.text_for = viclip, tokenizer, text_for
        self.fps, self.clip_seconds = fps, clip_seconds
        self.device = next(viclip.parameters()).device
        self._text_cache: dict[str, torch.Tensor] = {}
        self._clip_of_segment: dict[int, int] = {}
        self._clip_scores: dict[int, float] = {}
        self._clip: int | None = None
        self._frames: list[torch.Tensor] = []
        self._n = 0

    def add(self, segment: int, rgb: np.ndarray) -> None:
        clip = int(math.floor(self._n / self.fps / self.clip_seconds + 1e-9))
        if clip != self._clip:
            self._close()
            self._clip, self._frames = clip, []
        self._clip_of_segment.setdefault(segment, clip)
        self._frames.append(clip_crops([rgb])[0])  # the uint8 crop: 150 kB a frame, 24 MB for 10 s at 16 fps
        self._n += 1

    def _text(self, prompt: str) -> torch.Tensor:
        if prompt not in self._text_cache:
            ids = self.tokenizer(prompt, self.viclip.cfg.context_length).to(self.device)
            with torch.inference_mode():
                self._text_cache[prompt] = F.normalize(self.viclip.encode_text(ids).float(), dim=-1)
        return self._text_cache[prompt]

    def _close(self) -> None:
        if self._clip is None or not self._frames:
            return
        chosen = clip_normalise(torch.stack([self._frames[i] for i in middle_frame_indices(len(self._frames))]))
        with torch.inference_mode():
            video = F.normalize(self.viclip.encode_vision(chosen[None].to(self.device)).float(), dim=-1)
        text = self._text(self.text_for(self._clip * self.clip_seconds))
        self._clip_scores[self._clip] = float((video @ text.T)[0, 0])
        self._frames = []

    def finish(self, n_segments: int):
        self._close()
        self._clip = None
        per = np.full(n_segments, np.nan)
        for segment, clip in self._clip_of_segment.items():
            if segment < n_segments and clip in self._clip_scores:
                per[segment] = self._clip_scores[clip]
        scores = list(self._clip_scores.values())
        whole = float(np.mean(scores)) if scores else math.nan
        return {OVERALL_CONSISTENCY.name: per}, {OVERALL_CONSISTENCY.name: whole}

    def provenance(self) -> dict:
        return self._provenance


def constant_text(prompt: str) -> TextFor:
    return lambda _t: prompt


def scheduled_text(schedule: Sequence[tuple[float, str]]) -> TextFor:
    """[(start_s, prompt), ...] sorted by start -> the prompt in force at a time."""
    items = sorted(schedule)

    def at(t: float) -> str:
        current = items[0][1]
        for start, prompt in items:
            if start <= t + 1e-9:
                current = prompt
        return current

    return at
