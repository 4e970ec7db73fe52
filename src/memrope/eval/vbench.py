"""VBench-exact network metrics: subject consistency (DINO), background consistency (CLIP ViT-B/32),
aesthetic quality (CLIP ViT-L/14 + LAION head), plus anchor similarity to segment 0; and the suite
that loads every network once, these and those of `vbench_motion` (dynamic degree, motion
smoothness) and `vbench_quality` (imaging quality, overall consistency).

VBench's consistency score for a clip of frames with unit features f_0..f_{n-1} is
    mean over t >= 1 of 0.5 * [max(0, cos(f_{t-1}, f_t)) + max(0, cos(f_0, f_t))].
Here each segment is one clip (VBench-Long cuts 2 s clips; the whole-video number is the mean over
segments, as VBench-Long averages clip scores). Frames are subsampled to `feature_fps` unless it is
None. The anchor similarity of segment j is cos(mean feature of segment j, mean feature of segment 0):
the slow identity drift that clip-level scores cannot see.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from memrope.eval.preprocess import clip_inputs, dino_inputs
from memrope.eval.spec import MetricSpec
from memrope.eval.vbench_motion import DYNAMIC_DEGREE, MOTION_SMOOTHNESS, DynamicDegreeMetric, MotionSmoothnessMetric
from memrope.eval.vbench_quality import (
    IMAGING_QUALITY,
    OVERALL_CONSISTENCY,
    ImagingQualityMetric,
    OverallConsistencyMetric,
    TextFor,
)
from memrope.eval.weights import (
    AMT_S,
    CLIP_BPE_VOCAB,
    CLIP_VITB32,
    CLIP_VITL14,
    DINO_VITB16,
    LAION_AESTHETIC,
    MUSIQ_SPAQ,
    RAFT_THINGS,
    VICLIP_L14,
    LocatedWeights,
    WeightsMissing,
    hashes,
    load_aesthetic_head,
    load_clip_vision,
    load_dino,
    locate,
)

# VBench aesthetic_quality.py divides the LAION score (roughly 1..10) by 10.
AESTHETIC_SCALE = 10.0

SUBJECT_CONSISTENCY = MetricSpec(
    name="subject_consistency",
    implementation="vbench-formula;DINO ViT-B/16 CLS (transformers ViTModel, interpolate_pos_encoding);"
    "resize224-bilinear-noAA-nocrop;per-segment clip;mean-over-segments",
    unit="score in [0, 1]",
    higher_is_better=True,
    description="Whether the main subject keeps its appearance from frame to frame within a segment.",
)
SUBJECT_ANCHOR = MetricSpec(
    name="subject_anchor_similarity",
    implementation="cos(mean DINO CLS of segment, mean DINO CLS of segment 0)",
    unit="cosine",
    higher_is_better=True,
    description="Identity drift: how close each segment's subject stays to the opening segment.",
)
BACKGROUND_CONSISTENCY = MetricSpec(
    name="background_consistency",
    implementation="vbench-formula;CLIP ViT-B/32 image_embeds;resize224-bicubic-noAA+centercrop;"
    "per-segment clip;mean-over-segments",
    unit="score in [0, 1]",
    higher_is_better=True,
    description="Whether the scene/background stays consistent from frame to frame within a segment.",
)
BACKGROUND_ANCHOR = MetricSpec(
    name="background_anchor_similarity",
    implementation="cos(mean CLIP-B/32 embedding of segment, mean of segment 0)",
    unit="cosine",
    higher_is_better=True,
    description="Scene drift relative to the opening segment.",
)
AESTHETIC_QUALITY = MetricSpec(
    name="aesthetic_quality",
    implementation="vbench-formula;LAION sa_0_4_vit_l_14_linear(normalised CLIP ViT-L/14 image_embeds)/10",
    unit="score, about 0..1",
    higher_is_better=True,
    description="LAION aesthetic predictor; falls as frames degrade over long rollouts.",
)

Encoder = Callable[[list[np.ndarray]], torch.Tensor]


def consistency_terms(features: torch.Tensor) -> torch.Tensor:
    """VBench per-frame terms for t >= 1 from (N, D) features (normalised inside): shape (N - 1,)."""
    f = F.normalize(features.float(), dim=-1)
    prev = (f[1:] * f[:-1]).sum(-1).clamp_min(0)
    first = (f[1:] * f[:1]).sum(-1).clamp_min(0)
    return 0.5 * (prev + first)


def dino_encoder(model) -> Encoder:
    """Frames -> DINO CLS features (final layer norm applied, as the hub DINO returns)."""

    device = next(model.parameters()).device

    def encode(frames: list[np.ndarray]) -> torch.Tensor:
        out = model(pixel_values=dino_inputs(frames).to(device), interpolate_pos_encoding=True)
        return out.last_hidden_state[:, 0].float().cpu()

    return encode


def clip_encoder(model) -> Encoder:
    """Frames -> CLIP image embeddings (== OpenAI encode_image)."""

    device = next(model.parameters()).device

    def encode(frames: list[np.ndarray]) -> torch.Tensor:
        return model(pixel_values=clip_inputs(frames).to(device)).image_embeds.float().cpu()

    return encode


class _Batched:
    """Buffers (segment, frame) pairs and runs the encoder on full batches, in frame order."""

    def __init__(self, encode: Encoder, batch: int) -> None:
        self.encode = encode
        self.batch = batch
        self._frames: list[np.ndarray] = []
        self._segments: list[int] = []

    def add(self, segment: int, rgb: np.ndarray) -> None:
        self._frames.append(rgb)
        self._segments.append(segment)
        if len(self._frames) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if not self._frames:
            return
        with torch.inference_mode():
            feats = self.encode(self._frames).float()
        for seg, f in zip(self._segments, feats, strict=True):
            self.consume(seg, f)
        self._frames, self._segments = [], []

    def consume(self, segment: int, feature: torch.Tensor) -> None:
        raise NotImplementedError


class ConsistencyMetric(_Batched):
    """VBench consistency per segment plus anchor similarity, streaming (one feature kept per segment)."""

    def __init__(
        self,
        spec: MetricSpec,
        anchor_spec: MetricSpec,
        encode: Encoder,
        batch: int,
        provenance: dict | None = None,
    ) -> None:
        super().__init__(encode, batch)
        self.specs = (spec, anchor_spec)
        self._provenance = provenance or {}
        self._first: dict[int, torch.Tensor] = {}
        self._prev: dict[int, torch.Tensor] = {}
        self._sum: dict[int, float] = {}
        self._count: dict[int, int] = {}
        self._mean_feature: dict[int, torch.Tensor] = {}

    def consume(self, segment: int, feature: torch.Tensor) -> None:
        f = F.normalize(feature, dim=-1)
        if segment in self._first:
            term = 0.5 * (
                max(0.0, float(self._prev[segment] @ f)) + max(0.0, float(self._first[segment] @ f))
            )
            self._sum[segment] = self._sum.get(segment, 0.0) + term
            self._count[segment] = self._count.get(segment, 0) + 1
            self._mean_feature[segment] += f
        else:
            # frames arrive in time order: a new segment ends the previous one's clip state
            self._first.clear()
            self._prev.clear()
            self._first[segment] = f
            self._mean_feature[segment] = f.clone()
        self._prev[segment] = f

    def finish(self, n_segments: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        self.flush()
        spec, anchor_spec = self.specs
        score = np.full(n_segments, np.nan)
        anchor = np.full(n_segments, np.nan)
        for k in range(n_segments):
            if self._count.get(k):
                score[k] = self._sum[k] / self._count[k]
            if k in self._mean_feature and 0 in self._mean_feature:
                anchor[k] = float(F.cosine_similarity(self._mean_feature[k], self._mean_feature[0], dim=0))
        whole = {spec.name: _nanmean(score), anchor_spec.name: _nanmean(anchor)}
        return {spec.name: score, anchor_spec.name: anchor}, whole

    def provenance(self) -> dict:
        return self._provenance


class AestheticMetric(_Batched):
    """Mean LAION aesthetic score / 10 per segment."""

    specs = (AESTHETIC_QUALITY,)

    def __init__(self, clip_model, head: torch.nn.Module, batch: int, provenance: dict | None = None) -> None:
        encode_clip = clip_encoder(clip_model)

        def encode(frames: list[np.ndarray]) -> torch.Tensor:
            feats = F.normalize(encode_clip(frames).float(), dim=-1).to(head.weight.device)
            return (head(feats).squeeze(-1) / AESTHETIC_SCALE).cpu()

        super().__init__(encode, batch)
        self._provenance = provenance or {}
        self._sum: dict[int, float] = {}
        self._count: dict[int, int] = {}

    def consume(self, segment: int, feature: torch.Tensor) -> None:
        self._sum[segment] = self._sum.get(segment, 0.0) + float(feature)
        self._count[segment] = self._count.get(segment, 0) + 1

    def finish(self, n_segments: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        self.flush()
        score = np.full(n_segments, np.nan)
        for k, c in self._count.items():
            if k < n_segments:
                score[k] = self._sum[k] / c
        total = sum(self._count.values())
        whole = sum(self._sum.values()) / total if total else math.nan
        return {AESTHETIC_QUALITY.name: score}, {AESTHETIC_QUALITY.name: whole}

    def provenance(self) -> dict:
        return self._provenance


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _record(located: LocatedWeights) -> dict:
    return {located.source.name: {"kind": located.kind, "path": str(located.path), "sha256": hashes(located)}}


# the text a clip is scored against is needed for overall consistency only
NO_TEXT = "no prompt text for this video (memrope eval --text PROMPT)"


class NetworkSuite:
    """The network metrics whose weights are present, loaded (and hashed) once for many videos.

    fresh_metrics(fps, text_for) returns new per-video metric objects sharing the loaded networks;
    `skipped` maps each absent metric to the reason (where its weights were searched).
    """

    def __init__(self, weights_dir: str | Path | None, batch: int = 16, device: str | None = None) -> None:
        # float32 as in VBench; CUDA when present: DINO ViT-B/16 costs seconds per frame on 2 CPU cores
        self.device = device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch = batch
        self.skipped: dict[str, str] = {}
        self.provenance: dict = {}
        self._factories: list[Callable[[float, TextFor | None], object | None]] = []
        self._weights_dir = weights_dir
        self._try((SUBJECT_CONSISTENCY, SUBJECT_ANCHOR), (DINO_VITB16,), self._dino)
        self._try((BACKGROUND_CONSISTENCY, BACKGROUND_ANCHOR), (CLIP_VITB32,), self._clip_b32)
        self._try((AESTHETIC_QUALITY,), (CLIP_VITL14, LAION_AESTHETIC), self._aesthetic)
        self._try((IMAGING_QUALITY,), (MUSIQ_SPAQ,), self._musiq)
        self._try((DYNAMIC_DEGREE,), (RAFT_THINGS,), self._raft)
        self._try((MOTION_SMOOTHNESS,), (AMT_S,), self._amt)
        self._try((OVERALL_CONSISTENCY,), (VICLIP_L14, CLIP_BPE_VOCAB), self._viclip)

    def _try(self, specs, sources, build) -> None:
        try:
            located = [locate(self._weights_dir, s) for s in sources]
        except WeightsMissing as e:
            self.skipped.update({spec.name: str(e) for spec in specs})
            return
        self._factories.append(build(*located))
        for item in located:
            self.provenance.update(_record(item))

    def _dino(self, dino):
        encode = dino_encoder(load_dino(dino).to(self.device))
        return lambda fps, text: ConsistencyMetric(SUBJECT_CONSISTENCY, SUBJECT_ANCHOR, encode, self.batch)

    def _clip_b32(self, b32):
        encode = clip_encoder(load_clip_vision(b32).to(self.device))
        return lambda fps, text: ConsistencyMetric(BACKGROUND_CONSISTENCY, BACKGROUND_ANCHOR, encode, self.batch)

    def _aesthetic(self, l14, head):
        clip_l14, head_module = load_clip_vision(l14).to(self.device), load_aesthetic_head(head).to(self.device)
        return lambda fps, text: AestheticMetric(clip_l14, head_module, self.batch)

    def _musiq(self, located):
        from memrope.eval.nets.musiq import load_musiq

        model = load_musiq(located.path).to(self.device)
        return lambda fps, text: ImagingQualityMetric(model, fps, self.batch)

    def _raft(self, located):
        from memrope.eval.nets.raft import load_raft

        model = load_raft(located.path).to(self.device)
        return lambda fps, text: DynamicDegreeMetric(model, fps)

    def _amt(self, located):
        from memrope.eval.nets.amt import load_amt_s

        model = load_amt_s(located.path).to(self.device)
        return lambda fps, text: MotionSmoothnessMetric(model)

    def _viclip(self, weights, vocab):
        from memrope.eval.nets.viclip import load_tokenizer, load_viclip

        model, tokenizer = load_viclip(weights.path).to(self.device), load_tokenizer(vocab.path)
        return lambda fps, text: None if text is None else OverallConsistencyMetric(model, tokenizer, text, fps)

    def fresh_metrics(self, fps: float = 16.0, text_for: TextFor | None = None) -> list:
        return [m for make in self._factories if (m := make(fps, text_for)) is not None]

    def video_skips(self, text_for: TextFor | None) -> dict[str, str]:
        """Metrics skipped for one video although their weights are present (overall consistency without text)."""
        if text_for is None and OVERALL_CONSISTENCY.name not in self.skipped:
            return {OVERALL_CONSISTENCY.name: NO_TEXT}
        return {}


NETWORK_SPECS = (
    SUBJECT_CONSISTENCY,
    SUBJECT_ANCHOR,
    BACKGROUND_CONSISTENCY,
    BACKGROUND_ANCHOR,
    AESTHETIC_QUALITY,
    IMAGING_QUALITY,
    DYNAMIC_DEGREE,
    MOTION_SMOOTHNESS,
    OVERALL_CONSISTENCY,
)
