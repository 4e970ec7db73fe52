"""Machine-readable outputs: metrics.json (with provenance) and CSV tables.

metrics.json records, next to every number, how it was computed: the implementation tag of each
metric, the evaluation config, the sha256 of every weight file used, and the package versions.
"""

from __future__ import annotations

import csv
import json
import math
import platform
from importlib import metadata
from pathlib import Path

import numpy as np

from memrope.eval.evaluation import Evaluation

VERSIONED_PACKAGES = (
    "memrope",
    "numpy",
    "opencv-python-headless",
    "av",
    "torch",
    "transformers",
    "matplotlib",
    "safetensors",
)
SCHEMA_VERSION = 1


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _clean(value):
    """JSON-safe: NaN/inf -> null, numpy scalars/arrays -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def evaluation_dict(ev: Evaluation) -> dict:
    videos = []
    for v in ev.videos:
        a = v.analysis
        videos.append(
            {
                "label": a.label,
                "method": v.method,
                "prompt": v.prompt,
                "path": a.info.path,
                "video": {
                    "width": a.info.width,
                    "height": a.info.height,
                    "fps": a.info.fps,
                    "codec": a.info.codec,
                },
                "seconds_evaluated": a.seconds_evaluated,
                "elapsed_s": a.elapsed_s,
                "seconds_per_video_minute": a.elapsed_s / (a.seconds_evaluated / 60.0),
                "whole": a.whole,
                "seam": a.seam.to_dict(),
                "drift": {k: d.to_dict() for k, d in v.drift.items()},
                "long_drift": {k: d.to_dict() for k, d in v.long_drift.items()},
                "segments": {"start_s": a.segment_start_s, "end_s": a.segment_end_s, **a.per_segment},
            }
        )
    return _clean(
        {
            "schema_version": SCHEMA_VERSION,
            "versions": package_versions(),
            "config": ev.config.to_dict(),
            "metrics": {k: s.to_dict() for k, s in ev.specs.items()},
            "skipped": ev.skipped,
            "networks": ev.networks,
            "videos": videos,
            "summary": {m: {k: e.to_dict() for k, e in per.items()} for m, per in ev.summary.items()},
            "comparisons": {k: [c.to_dict() for c in cs] for k, cs in ev.comparisons.items() if cs},
        }
    )


def write_json(ev: Evaluation, path: Path) -> Path:
    path.write_text(json.dumps(evaluation_dict(ev), indent=2, allow_nan=False))
    return path


def write_csvs(ev: Evaluation, out_dir: Path) -> list[Path]:
    """segments.csv (one row per video segment) and whole.csv (one row per video)."""
    names = list(dict.fromkeys(n for v in ev.videos for n in v.analysis.per_segment))
    seg_path, whole_path = out_dir / "segments.csv", out_dir / "whole.csv"
    with open(seg_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "method", "prompt", "segment", "start_s", "end_s", *names])
        for v in ev.videos:
            a = v.analysis
            for k in range(a.n_segments):
                row = [a.per_segment[n][k] if n in a.per_segment else math.nan for n in names]
                w.writerow(
                    [
                        a.label,
                        v.method,
                        v.prompt,
                        k,
                        f"{a.segment_start_s[k]:.3f}",
                        f"{a.segment_end_s[k]:.3f}",
                        *(_fmt(x) for x in row),
                    ]
                )
    whole_names = list(dict.fromkeys(n for v in ev.videos for n in v.analysis.whole))
    with open(whole_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "method", "prompt", "seconds", *whole_names])
        for v in ev.videos:
            a = v.analysis
            w.writerow(
                [
                    a.label,
                    v.method,
                    v.prompt,
                    f"{a.seconds_evaluated:.3f}",
                    *(_fmt(a.whole.get(n, math.nan)) for n in whole_names),
                ]
            )
    return [seg_path, whole_path]


def _fmt(x: float) -> str:
    return "" if not math.isfinite(x) else f"{x:.6g}"
