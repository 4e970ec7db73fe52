"""The long-video papers' drift numbers: quality drift (first 5 s against last 5 s) and LV-Bench's
Video Drift Error (VDE), for every metric with a per-segment curve.

Quality drift, as the issue states the long-video tables' "quality drift": the metric over the
first 5 s minus the metric over the last 5 s (positive = the video got worse, for a score). Some
tables print its absolute value; the sign is kept here.

VDE, alibaba-damo-academy/Inferix@479c9ba ``LV-Bench/vde.py`` (BlockVid, arXiv 2511.22973): cut the
video into N = 10 equal chunks (frames // 10 each, the remainder dropped), score each chunk, and with
m_1 the first chunk's score
    VDE = sum_{i=2..N} w_i |m_i - m_1| / m_1,  w_i = N - i + 1 (linear) or log(N - i + 1) (log);
0 when N < 2, infinite when m_1 = 0. Early chunks weigh most; the log weights ignore the last chunk.
LV-Bench names them VDE-Clarity (imaging quality), VDE-Motion (motion smoothness), VDE-Aesthetic,
VDE-Dynamic (dynamic degree), VDE-Subject and VDE-Background (the consistencies).

Basis: where a metric is a mean over frames and memrope keeps its per-frame values (imaging quality),
both numbers come from the frames themselves, exactly. Otherwise they come from the per-segment
(2 s clip) curve: a window's or chunk's value is the mean of the segment values weighted by how much
of each segment falls inside it. LV-Bench scores each chunk as one clip instead (for dynamic degree
a chunk is "dynamic" or not); the ``basis`` field says which was used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

QUALITY_DRIFT_SECONDS = 5.0
VDE_CHUNKS = 10  # vde.py: N_CHUNKS = 10
VDE_WEIGHTS = ("linear", "log")
PAPER_NAMES = {
    "imaging_quality": "VDE-Clarity",
    "motion_smoothness": "VDE-Motion",
    "aesthetic_quality": "VDE-Aesthetic",
    "dynamic_degree": "VDE-Dynamic",
    "subject_consistency": "VDE-Subject",
    "background_consistency": "VDE-Background",
}
QUALITY_DRIFT_NAME = "quality drift (first 5 s - last 5 s)"


@dataclass(frozen=True)
class LongDrift:
    """One metric's quality drift and VDE (linear and log weights), with the basis they were computed on."""

    quality_drift: float
    first_5s: float
    last_5s: float
    vde_linear: float
    vde_log: float
    chunk_values: tuple[float, ...]
    basis: str
    vde_name: str
    quality_drift_name: str = QUALITY_DRIFT_NAME

    def to_dict(self) -> dict:
        return asdict(self)


def vde(chunk_values, weights: str = "linear") -> float:
    """LV-Bench's Video Drift Error of per-chunk scores m_1..m_N."""
    if weights not in VDE_WEIGHTS:
        raise ValueError(f"weights={weights!r}: use one of {VDE_WEIGHTS}")
    m = np.asarray(chunk_values, dtype=np.float64)
    n = m.size
    if n < 2:
        return 0.0
    if m[0] == 0:
        return math.inf
    i = np.arange(2, n + 1, dtype=np.float64)
    w = n - i + 1 if weights == "linear" else np.log(n - i + 1)
    return float(np.sum(w * np.abs(m[1:] - m[0]) / m[0]))


def frame_chunks(values, n_chunks: int = VDE_CHUNKS) -> np.ndarray:
    """vde.py's split: frames // n_chunks frames per chunk, the remainder dropped, chunk means."""
    v = np.asarray(values, dtype=np.float64)
    per = v.size // n_chunks
    if per == 0:
        return np.full(0, np.nan)
    return v[: per * n_chunks].reshape(n_chunks, per).mean(axis=1)


def overlap_mean(starts, ends, values, lo: float, hi: float) -> float:
    """Mean of segment values weighted by each segment's overlap with [lo, hi) (NaN segments skipped)."""
    s, e, v = (np.asarray(x, dtype=np.float64) for x in (starts, ends, values))
    w = np.clip(np.minimum(e, hi) - np.maximum(s, lo), 0, None)
    ok = np.isfinite(v) & (w > 0)
    return float(np.sum(w[ok] * v[ok]) / np.sum(w[ok])) if ok.any() else math.nan


def segment_chunks(starts, ends, values, duration: float, n_chunks: int = VDE_CHUNKS) -> np.ndarray:
    edges = np.linspace(0.0, duration, n_chunks + 1)
    return np.array([overlap_mean(starts, ends, values, a, b) for a, b in zip(edges[:-1], edges[1:])])


def long_drift_from_frames(name: str, times, values, duration: float) -> LongDrift:
    t, v = np.asarray(times, dtype=np.float64), np.asarray(values, dtype=np.float64)
    first = float(np.nanmean(v[t < QUALITY_DRIFT_SECONDS])) if (t < QUALITY_DRIFT_SECONDS).any() else math.nan
    late = t >= duration - QUALITY_DRIFT_SECONDS
    last = float(np.nanmean(v[late])) if late.any() else math.nan
    chunks = frame_chunks(v)
    return _drift(name, first, last, chunks, "frames")


def long_drift_from_segments(name: str, starts, ends, values, duration: float) -> LongDrift:
    first = overlap_mean(starts, ends, values, 0.0, QUALITY_DRIFT_SECONDS)
    last = overlap_mean(starts, ends, values, duration - QUALITY_DRIFT_SECONDS, duration)
    return _drift(name, first, last, segment_chunks(starts, ends, values, duration), "segments")


def _drift(name: str, first: float, last: float, chunks: np.ndarray, basis: str) -> LongDrift:
    finite = chunks.size == VDE_CHUNKS and bool(np.isfinite(chunks).all())
    return LongDrift(
        quality_drift=first - last,
        first_5s=first,
        last_5s=last,
        vde_linear=vde(chunks, "linear") if finite else math.nan,
        vde_log=vde(chunks, "log") if finite else math.nan,
        chunk_values=tuple(float(c) for c in chunks),
        basis=basis,
        vde_name=PAPER_NAMES.get(name, f"VDE({name})"),
    )
