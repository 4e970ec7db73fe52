"""VBench's Quality Score: the weighted mean of its seven quality dimensions after min-max
normalisation, as Vchitect/VBench@45e79ec1 ``scripts/constant.py`` and ``scripts/cal_final_score.py``
define it (the Total Score also needs the nine semantic dimensions, which memrope does not compute).

    normalised(d) = (score(d) - Min(d)) / (Max(d) - Min(d)) * weight(d)
    Quality = sum of normalised(d) over the 7 quality dimensions / sum of their weights
with weight 0.5 for dynamic degree and 1 for the others. Where the papers quote a VBench-Long
Quality Score, it is this formula over the VBench-Long dimension scores.

Deviation: VBench-Long runs temporal flickering on static clips only (``static_filter``);
memrope's temporal flickering scores every 2 s clip, so a Quality Score here is not the
leaderboard's when the video moves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from memrope.eval.spec import MetricSpec

# constant.py NORMALIZE_DIC (quality dimensions) and DIM_WEIGHT
NORMALIZATION = {
    "subject_consistency": (0.1462, 1.0),
    "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0),
    "motion_smoothness": (0.706, 0.9975),
    "dynamic_degree": (0.0, 1.0),
    "aesthetic_quality": (0.0, 1.0),
    "imaging_quality": (0.0, 1.0),
}
WEIGHTS = {name: 1.0 for name in NORMALIZATION} | {"dynamic_degree": 0.5}

QUALITY_SCORE = MetricSpec(
    name="vbench_quality_score",
    implementation="vbench-formula:cal_final_score.get_quality_score over the 7 quality dimensions "
    "(min-max normalised, dynamic degree weight 0.5);flicker not static-filtered",
    unit="score, about 0..1",
    description="VBench's Quality Score from this video's dimension scores (only when all seven are computed).",
    higher_is_better=True,
)


def quality_score(scores: Mapping[str, float]) -> float:
    """VBench's Quality Score from whole-video dimension scores; NaN unless all seven are finite."""
    values = [scores.get(name, math.nan) for name in NORMALIZATION]
    if not all(math.isfinite(v) for v in values):
        return math.nan
    total = sum((v - lo) / (hi - lo) * WEIGHTS[name] for v, (name, (lo, hi)) in zip(values, NORMALIZATION.items()))
    return total / sum(WEIGHTS.values())
