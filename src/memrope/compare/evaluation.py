"""Evaluating a study: one record per (video, horizon), sharded like the videos, then merged into the report.

Each horizon of a video is evaluated on its prefix cut to **whole drift segments**: ``k = floor(H / L)``
segments of ``L`` seconds, evaluated as the first ``k L`` seconds (``EvalConfig.max_seconds``). A
horizon that is not a multiple of the segment length loses its trailing partial segment, and the
record says how many seconds (and frames) were dropped; a video shorter than one segment is evaluated
whole and has no drift values at all. So no drift value ever comes from a partial segment. Each
record also holds the thumbnails of its video at log-spaced late times (``grid_times``) for the
report's grid, and where the video is.

The seam period is the chunk's length in video frames (``chunk_frames x`` the decoder's temporal
stride), known from the settings rather than searched for.

Records are ``eval/<video>@<horizon>.json`` with done-markers from :func:`memrope.sharding.run_sharded`
(the identity: the video's settings hash, the horizon and the evaluation settings), so a rerun
evaluates only what is new. ``merge`` reads every record and writes the report (rank 0, or
``memrope compare --merge``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..session import MANIFEST
from .runs import HASH_CHARS, Job, StudyVideos
from .study import Horizon, Study

EVAL = "eval"
REPORT = "report"
THUMBS = "thumbs"
GRID_COLUMNS = 5  # thumbnails per row: H/16, H/8, H/4, H/2, H (log-spaced, late times)
THUMB_HEIGHT = 120  # pixels; smaller videos are shown at their own size
ROUND_OFF = 1e-9


def whole_segments(horizon_s: float, video_s: float, segment_s: float) -> tuple[int, float]:
    """(whole segments evaluated, seconds evaluated) of a horizon: the trailing partial segment dropped;
    a video shorter than one segment: (0, all of it)."""
    limit = min(horizon_s, video_s)
    k = int(math.floor(limit / segment_s + ROUND_OFF))
    return (k, k * segment_s) if k >= 1 else (0, limit)


def grid_times(seconds: float, fps: float) -> list[float]:
    """Log-spaced late times H / 2^j (j = 4..0), the last one the last frame; distinct frames only."""
    last = max(0.0, seconds - 1.0 / fps)
    times = [min(last, seconds / 2 ** j) for j in range(GRID_COLUMNS - 1, -1, -1)]
    times[-1] = last
    frames = sorted({round(t * fps) for t in times})
    return [f / fps for f in frames]


class StudyEvaluation:
    """The study's (video, horizon) records as the work items of ``run_sharded``."""

    def __init__(self, study: Study, progress: bool = False):
        self.study, self.progress = study, progress
        self.videos = StudyVideos(study)
        self.items = [(v, h) for v in range(len(self.videos.jobs)) for h in range(len(study.horizons))]
        self.dir = study.out / EVAL
        self.report_dir = study.out / REPORT
        self._suite = None
        self.seam_period = study.clock.chunk_frames * study.clock.stride

    def keys(self) -> list[str]:
        return [self.output_name(i, "") for i in range(len(self.items))]

    def output_name(self, index: int, key: str) -> str:
        v, h = self.items[index]
        return f"{Path(self.videos.names[v]).stem}@{self.study.horizons[h].seconds:g}s.json"

    def config_dict(self) -> dict[str, Any]:
        return {"segment_seconds": self.study.segment_seconds, "seam_period": self.seam_period,
                "weights_dir": None if self.study.weights_dir is None else str(self.study.weights_dir)}

    def identity(self, index: int, key: str) -> str:
        import hashlib

        v, h = self.items[index]
        # the video's name (every setting but its length): a video extended to a longer horizon keeps its
        # prefix, so the records of the shorter horizons stay valid
        payload = {"video": self.videos.names[v], "horizon": vars(self.study.horizons[h]),
                   "config": self.config_dict(), "grid": h == len(self.study.horizons) - 1}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def suite(self):
        if self._suite is None:
            from ..eval.evaluate import _NoNetworks

            try:
                from ..eval.vbench import NetworkSuite

                self._suite = NetworkSuite(self.study.weights_dir)
            except ImportError as e:
                self._suite = _NoNetworks(f"network metrics need transformers: {e}")
        return self._suite

    def evaluate_one(self, index: int, key: str, path: Path) -> None:
        v, h = self.items[index]
        job, horizon = self.videos.jobs[v], self.study.horizons[h]
        record = self.evaluate(job, self.videos.path(v), horizon, grid=h == len(self.study.horizons) - 1)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=1, default=_json_default) + "\n")
        tmp.replace(path)

    def evaluate(self, job: Job, video: Path, horizon: Horizon, grid: bool) -> dict[str, Any]:
        from ..eval.analysis import analyze_video
        from ..eval.config import EvalConfig
        from ..eval.evaluate import DEFAULT_DRIFT_THRESHOLDS, _text_for, add_quality_score, drift_for
        from ..eval.reader import probe_video

        info = probe_video(video)
        manifest = json.loads((video.with_name(video.name + ".run") / MANIFEST).read_text())
        video_frames = int(manifest["frames"])
        video_s = video_frames / info.fps
        horizon_s = horizon.seconds
        k, seconds = whole_segments(horizon_s, video_s, self.study.segment_seconds)
        config = EvalConfig(segment_seconds=self.study.segment_seconds, seam_period=self.seam_period,
                            max_seconds=seconds if k else None)
        starts, t = [], 0.0
        for seg in job.prompt.segments:
            starts.append((t, seg.prompt))
            t += seg.seconds or 0.0
        suite = self.suite()
        text_for = _text_for(starts)
        analysis = analyze_video(video, config, label=video.stem, features=suite.fresh_metrics(info.fps, text_for),
                                 progress=self.progress)
        add_quality_score(analysis)
        if k and analysis.n_segments != k:
            raise RuntimeError(f"{video}: {analysis.n_segments} segments evaluated where {k} whole ones were cut")
        drift = {n: d.to_dict() for n, d in drift_for(analysis, DEFAULT_DRIFT_THRESHOLDS).items()} if k >= 2 else {}
        thumbs = self.thumbnails(video, analysis.seconds_evaluated, info.fps) if grid else []
        horizon_frames = round(min(horizon_s, video_s) * info.fps)
        evaluated_frames = round(analysis.seconds_evaluated * info.fps)
        return {
            "video": f"../{video.parent.name}/{video.name}", "base": job.base.name, "policy": job.policy.label,
            "prompt": job.prompt.id, "prompt_text": job.prompt.text, "seed": job.seed, "unit": job.unit,
            "horizon": horizon.seconds, "horizon_label": horizon.label, "video_seconds": video_s,
            "seconds_evaluated": analysis.seconds_evaluated, "whole_segments": k,
            "segment_seconds": self.study.segment_seconds,
            "dropped_seconds": max(0.0, min(horizon_s, video_s) - analysis.seconds_evaluated),
            "dropped_frames": max(0, horizon_frames - evaluated_frames),
            "size": [info.width, info.height], "fps": info.fps,
            "whole": analysis.whole, "drift": drift,
            "per_segment": {n: list(map(float, vals)) for n, vals in analysis.per_segment.items()} if k else {},
            "seam": {"period": analysis.seam.period, "phase": analysis.seam.phase,
                     "contrast": analysis.seam.contrast, "detected": analysis.seam.detected},
            "specs": {n: {"higher_is_better": s.higher_is_better, "unit": s.unit, "description": s.description,
                          "implementation": s.implementation} for n, s in analysis.specs.items()},
            "skipped": {**suite.skipped, **suite.video_skips(text_for)}, "thumbnails": thumbs,
        }

    def thumbnails(self, video: Path, seconds: float, fps: float) -> list[list]:
        """PNG thumbnails at ``grid_times`` into report/thumbs/; [[time, path relative to the report]]."""
        import cv2

        from ..eval.reader import iter_frames

        wanted = grid_times(seconds, fps)
        out_dir = self.report_dir / THUMBS
        out_dir.mkdir(parents=True, exist_ok=True)
        out, i = [], 0
        for frame in iter_frames(video, max_seconds=seconds):
            if i < len(wanted) and frame.index >= round(wanted[i] * fps):
                rgb = frame.rgb
                if rgb.shape[0] > THUMB_HEIGHT:
                    width = round(rgb.shape[1] * THUMB_HEIGHT / rgb.shape[0])
                    rgb = cv2.resize(rgb, (width, THUMB_HEIGHT), interpolation=cv2.INTER_AREA)
                name = f"{video.stem}_{frame.index:07d}.png"
                cv2.imwrite(str(out_dir / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                out.append([frame.index / fps, f"{THUMBS}/{name}"])
                i += 1
        return out


def _json_default(x):
    import numpy as np

    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def evaluate_study(study: Study, progress: bool = False):
    """This rank's share of the study's records (a ``sharding.ShardReport``)."""
    from ..sharding import run_sharded

    ev = StudyEvaluation(study, progress)
    return run_sharded(ev.keys(), ev.dir, ev.evaluate_one, output_name=ev.output_name, identity=ev.identity,
                       manifest_extra={"study": study.name})


def read_records(study: Study) -> list[dict[str, Any]]:
    """Every record of the study (a ``UserError`` naming what is missing: run the study again)."""
    from ..sharding import is_done

    ev = StudyEvaluation(study)
    records, missing = [], []
    for i, name in enumerate(ev.keys()):
        path = ev.dir / name
        if not is_done(path, ev.identity(i, name)):
            missing.append(name)
            continue
        records.append(json.loads(path.read_text()))
    if missing:
        raise UserError(f"{len(missing)} of {len(ev.keys())} evaluations are missing or stale (e.g. {missing[0]}); "
                        f"run the study again (without --merge) to make them")
    return records


def merge(study: Study) -> Path:
    """The report from every record: ``report/report.html`` and ``report/records.json``."""
    from ..eval.study_report import write_study_report

    records = read_records(study)
    meta = {"name": study.name, "reference": study.reference, "policies": [p.label for p in study.policies],
            "bases": [b.name for b in study.bases], "horizons": [[h.seconds, h.label] for h in study.horizons],
            "segment_seconds": study.segment_seconds, "grid_videos": study.grid_videos,
            "seam_period": study.clock.chunk_frames * study.clock.stride,
            "chunk": f"{study.clock.chunk_frames} latent frames x {study.clock.stride} video frames",
            "hash_chars": HASH_CHARS, "study": study.to_dict()}
    return write_study_report(study.out / REPORT, meta, records)
