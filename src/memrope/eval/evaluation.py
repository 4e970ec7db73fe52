"""The result of evaluating labelled videos: one ``VideoResult`` per video and the cross-video summaries.

Its own module so that the writers (``report``, ``export``, ``plots``) and the evaluator that builds it
(``evaluate``) all import it from one floor down, never from each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memrope.eval.analysis import VideoAnalysis
from memrope.eval.bootstrap import Estimate, PairedComparison
from memrope.eval.config import EvalConfig
from memrope.eval.drift import DriftSummary
from memrope.eval.long_drift import LongDrift
from memrope.eval.spec import MetricSpec


@dataclass
class VideoResult:
    """One evaluated video with its method label, prompt id, the drift summary of every metric and the
    papers' drift numbers (quality drift, LV-Bench VDE) of every metric."""

    analysis: VideoAnalysis
    method: str
    prompt: str
    drift: dict[str, DriftSummary]
    long_drift: dict[str, LongDrift] = field(default_factory=dict)


@dataclass
class Evaluation:
    """All videos plus the across-prompt summaries. summary[method][metric] uses whole-video values."""

    videos: list[VideoResult]
    config: EvalConfig
    specs: dict[str, MetricSpec]
    skipped: dict[str, str]
    summary: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    comparisons: dict[str, list[PairedComparison]] = field(default_factory=dict)
    networks: dict = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(v.method for v in self.videos))
