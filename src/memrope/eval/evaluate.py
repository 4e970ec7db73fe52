"""Evaluate several labelled videos and derive the cross-video protocol (drift, CIs, paired tests).

`evaluate_videos` is what `memrope eval` and a future `memrope compare` call: one video per
(method label, prompt id). Each video gets per-segment curves and drift summaries; across prompts,
each method gets a bootstrap mean and CI per metric, and every pair of methods a paired bootstrap
of the per-prompt difference (prompts present for both methods only).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from memrope.eval.analysis import VideoAnalysis, analyze_video
from memrope.eval.bootstrap import Estimate, PairedComparison, bootstrap_mean_ci, paired_bootstrap
from memrope.eval.config import EvalConfig
from memrope.eval.drift import DriftSummary, drift_summary
from memrope.eval.evaluation import Evaluation, VideoResult
from memrope.eval.histogram import HISTOGRAM_DRIFT
from memrope.eval.long_drift import LongDrift, long_drift_from_frames, long_drift_from_segments
from memrope.eval.paired_tests import paired_test
from memrope.eval.reader import probe_video
from memrope.eval.repetition import PIXEL_ANCHOR_SIMILARITY
from memrope.eval.spec import MetricSpec

# Heuristic drift thresholds ("time to threshold"), chosen as clearly visible changes, not calibrated
# against human judgement: a Bhattacharyya distance of 0.3 is a different palette; a mean thumbnail
# correlation of 0.5 or a DINO/CLIP anchor cosine of 0.8 is a different-looking scene.
DEFAULT_DRIFT_THRESHOLDS: dict[str, float] = {
    HISTOGRAM_DRIFT.name: 0.3,
    PIXEL_ANCHOR_SIMILARITY.name: 0.5,
    # names of memrope.eval.vbench's anchor metrics (not imported here: that would load transformers)
    "subject_anchor_similarity": 0.8,
    "background_anchor_similarity": 0.8,
}


# memrope.eval.vbench's metric names, listed here so they can be reported as skipped without it.
NETWORK_METRIC_NAMES = (
    "subject_consistency",
    "subject_anchor_similarity",
    "background_consistency",
    "background_anchor_similarity",
    "aesthetic_quality",
    "imaging_quality",
    "dynamic_degree",
    "motion_smoothness",
    "overall_consistency",
)


class _NoNetworks:
    """Stand-in for NetworkSuite when transformers cannot be imported: every network metric skipped."""

    def __init__(self, reason: str) -> None:
        self.skipped = dict.fromkeys(NETWORK_METRIC_NAMES, reason)
        self.provenance: dict = {}

    def fresh_metrics(self, fps: float = 0.0, text_for=None) -> list:
        return []

    def video_skips(self, text_for) -> dict[str, str]:
        return {}


def falling_for(spec: MetricSpec | None, first: float, threshold: float) -> bool:
    """Whether reaching the threshold means going down (scores) or up (errors, distances)."""
    if spec is not None and spec.higher_is_better is not None:
        return spec.higher_is_better
    return not (math.isfinite(first) and threshold > first)


def whole_segment_mask(analysis: VideoAnalysis) -> np.ndarray:
    """True for the segments that last the full segment length: a trailing partial one (a video of 10.125 s
    in 2 s segments ends in 2 frames) is no evidence of drift, so drift summaries leave it out."""
    seg = analysis.config.segment_seconds
    return (analysis.segment_end_s - analysis.segment_start_s) >= seg * (1 - 1e-9)


def drift_for(analysis: VideoAnalysis, thresholds: Mapping[str, float]) -> dict[str, DriftSummary]:
    out = {}
    whole = whole_segment_mask(analysis)
    for name, values in analysis.per_segment.items():
        values = np.where(whole, values, np.nan)
        threshold = thresholds.get(name)
        finite = values[np.isfinite(values)]
        first = float(finite[0]) if finite.size else math.nan
        falling = falling_for(analysis.specs.get(name), first, threshold) if threshold is not None else True
        out[name] = drift_summary(analysis.segment_start_s, values, threshold, falling)
    return out


def add_quality_score(analysis: VideoAnalysis) -> None:
    """VBench's Quality Score (whole video and per segment) when all seven quality dimensions are computed."""
    from memrope.eval.vbench_scores import NORMALIZATION, QUALITY_SCORE, quality_score

    if not all(name in analysis.whole for name in NORMALIZATION):
        return
    analysis.whole[QUALITY_SCORE.name] = quality_score(analysis.whole)
    analysis.per_segment[QUALITY_SCORE.name] = np.array([
        quality_score({n: analysis.per_segment[n][k] for n in NORMALIZATION}) for k in range(analysis.n_segments)])
    analysis.specs[QUALITY_SCORE.name] = QUALITY_SCORE


def long_drift_for(analysis: VideoAnalysis) -> dict[str, LongDrift]:
    """Quality drift and VDE of every metric: from per-frame values where kept, else the segment curve."""
    duration = analysis.seconds_evaluated
    out = {}
    for name, values in analysis.per_segment.items():
        if name in analysis.frame_series:
            times, frame_values = analysis.frame_series[name]
            out[name] = long_drift_from_frames(name, times, frame_values, duration)
        else:
            out[name] = long_drift_from_segments(name, analysis.segment_start_s, analysis.segment_end_s, values,
                                                 duration)
    return out


def summarise(
    videos: Sequence[VideoResult], n_resamples: int = 10_000, seed: int = 0
) -> tuple[dict[str, dict[str, Estimate]], dict[str, list[PairedComparison]]]:
    """Bootstrap mean/CI per method and metric; paired bootstrap for every pair of methods."""
    methods = list(dict.fromkeys(v.method for v in videos))
    names = list(dict.fromkeys(n for v in videos for n in v.analysis.whole))
    table: dict[str, dict[str, dict[str, float]]] = {m: {} for m in methods}
    for v in videos:
        if v.prompt in table[v.method]:
            raise ValueError(f"method {v.method!r} has two videos for prompt {v.prompt!r}")
        table[v.method][v.prompt] = v.analysis.whole
    summary = {
        m: {
            n: bootstrap_mean_ci(
                [w.get(n, math.nan) for w in table[m].values()], n_resamples=n_resamples, seed=seed
            )
            for n in names
        }
        for m in methods
    }
    comparisons: dict[str, list[PairedComparison]] = {n: [] for n in names}
    for a, b in itertools.combinations(methods, 2):
        shared = [p for p in table[a] if p in table[b]]
        if not shared:
            continue
        for n in names:
            xa = [table[a][p].get(n, math.nan) for p in shared]
            xb = [table[b][p].get(n, math.nan) for p in shared]
            boot = paired_bootstrap(xa, xb, a, b, n_resamples=n_resamples, seed=seed)
            # the p of the exact sign-flip test: a bootstrap p can fall below what n pairs support (0 at n = 2)
            comparisons[n].append(PairedComparison(a, b, boot.difference, paired_test(xa, xb).p_value))
    return summary, comparisons


def evaluate_videos(
    paths: Sequence[str | Path],
    out_dir: str | Path | None,
    weights_dir: str | Path | None = None,
    labels: Sequence[str] | None = None,
    prompts: Sequence[str] | None = None,
    config: EvalConfig | None = None,
    texts: Sequence[str | Sequence[tuple[float, str]] | None] | None = None,
    thresholds: Mapping[str, float] | None = None,
    progress: bool = False,
) -> Evaluation:
    """Evaluate videos and, if out_dir is given, write metrics.json, CSVs, plots and report.html there.

    labels: method label per video (default: file stem). prompts: prompt id per video, used to pair
    videos across methods (default: every video is prompt "0", i.e. one prompt per method).
    texts: the prompt text of each video for overall consistency: a string, or a schedule
    [(start_s, prompt), ...]; None (or a None entry) skips that dimension for the video.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no videos to evaluate")
    if labels is None:
        stems = [p.stem for p in paths]
        labels = [s if stems.count(s) == 1 else f"{s}_{i}" for i, s in enumerate(stems)]
    labels = list(labels)
    prompts = list(prompts) if prompts is not None else ["0"] * len(paths)
    if len(labels) != len(paths) or len(prompts) != len(paths):
        raise ValueError(f"{len(paths)} videos but {len(labels)} labels and {len(prompts)} prompt ids")
    texts = list(texts) if texts is not None else [None] * len(paths)
    if len(texts) != len(paths):
        raise ValueError(f"{len(paths)} videos but {len(texts)} prompt texts")
    config = config or EvalConfig()
    thresholds = {**DEFAULT_DRIFT_THRESHOLDS, **(thresholds or {})}
    try:
        from memrope.eval.vbench import NetworkSuite  # imports transformers: only when evaluating

        suite = NetworkSuite(weights_dir, config.feature_batch)
    except ImportError as e:  # transformers missing: weight-free metrics still run
        suite = _NoNetworks(f"network metrics need transformers: {e}")
    videos, specs = [], {}
    skipped = dict(suite.skipped)
    for path, method, prompt, text in zip(paths, labels, prompts, texts, strict=True):
        # Network metrics hold per-video state: fresh objects per video, networks loaded once.
        text_for = _text_for(text)
        features = suite.fresh_metrics(probe_video(path).fps, text_for)
        name = method if prompts.count(prompt) == len(prompts) else f"{method}/{prompt}"
        analysis = analyze_video(path, config, label=name, features=features, progress=progress)
        add_quality_score(analysis)
        analysis.skipped.update({**suite.skipped, **suite.video_skips(text_for)})
        skipped.update(suite.video_skips(text_for))
        specs.update(analysis.specs)
        videos.append(VideoResult(analysis, method, prompt, drift_for(analysis, thresholds), long_drift_for(analysis)))
    summary, comparisons = summarise(videos)
    evaluation = Evaluation(videos, config, specs, skipped, summary, comparisons, suite.provenance)
    if out_dir is not None:
        from memrope.eval.report import write_report

        write_report(evaluation, out_dir)
    return evaluation


def _text_for(text):
    """A prompt (str) or a schedule [(start_s, prompt), ...] -> the prompt in force at a time (or None)."""
    if text is None:
        return None
    from memrope.eval.vbench_quality import constant_text, scheduled_text

    if isinstance(text, str):
        return constant_text(text)
    return scheduled_text([(float(t), str(p)) for t, p in text])
