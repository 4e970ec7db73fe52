"""Repetition: is the video showing again what it showed before?

Long rollouts with a bounded memory can fall into loops (the same motion cycle replayed). Each kept
frame becomes a tiny grey thumbnail, centred and unit-normalised, so a dot product is the Pearson
correlation of two frames. A frame's repetition is its best correlation with any frame at least
`min_lag` seconds older (near neighbours are excluded: that is continuity, not a loop); a segment's
repetition is the mean over its frames. The same vectors give the segment x segment similarity map:
for each frame of one segment its best correlation within the other, averaged (and symmetrised).

A still video is maximally repetitive by this measure, which is correct (nothing new is shown);
read it next to the motion metrics to tell a loop from a freeze.
"""

from __future__ import annotations

import cv2
import numpy as np

from memrope.eval.spec import MetricSpec

# 32x18 keeps the 16:9 layout and ~600 values: enough to tell scenes apart, blind to noise and codec
# texture, and 2.3 kB per kept frame (about 17 MB for an hour at 2 fps).
THUMB_SIZE = (32, 18)
# A thumbnail flatter than this (std of 0..1 grey) has no structure to correlate; it is treated as the
# constant direction so two flat frames still count as the same picture.
FLAT_STD = 1e-4
# Frames per row block when building the similarity map (bounds the correlation block to ~8 MB/hour).
SIMILARITY_BLOCK_FRAMES = 256

REPETITION = MetricSpec(
    name="repetition",
    implementation=(
        f"mean over frames of max corr(grey {THUMB_SIZE[0]}x{THUMB_SIZE[1]} thumb, frames older than min lag)"
    ),
    unit="correlation in [-1, 1]",
    description="How much each segment re-shows earlier content; loops score near 1.",
    higher_is_better=False,
)
PIXEL_ANCHOR_SIMILARITY = MetricSpec(
    name="pixel_anchor_similarity",
    implementation="row 0 of the similarity map: mean best-match thumbnail corr with segment 0 frames",
    unit="correlation in [-1, 1]",
    description="Weight-free similarity of each segment to the start; falls as the scene drifts away.",
    higher_is_better=True,
)


def thumbnail_vector(gray: np.ndarray) -> np.ndarray:
    """Centred, unit-norm float32 vector of the frame's grey thumbnail."""
    small = cv2.resize(gray, THUMB_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32).ravel() / 255.0
    small -= small.mean()
    norm = float(np.linalg.norm(small))
    if norm < FLAT_STD * np.sqrt(small.size):
        return np.full(small.size, 1.0 / np.sqrt(small.size), dtype=np.float32)
    return small / norm


class RepetitionTracker:
    """Keeps every thumbnail vector (growing array, doubled as needed) and the running per-segment sums."""

    def __init__(self, min_lag_seconds: float) -> None:
        self.min_lag = float(min_lag_seconds)
        dim = THUMB_SIZE[0] * THUMB_SIZE[1]
        self._vectors = np.zeros((256, dim), dtype=np.float32)
        self._times = np.zeros(256)
        self._n = 0
        self._segments: list[int] = []
        self._best: dict[int, list[float]] = {}

    def add(self, segment: int, time_s: float, gray: np.ndarray) -> None:
        v = thumbnail_vector(gray)
        older = self._times[: self._n] <= time_s - self.min_lag
        if older.any():
            best = float((self._vectors[: self._n][older] @ v).max())
            self._best.setdefault(segment, []).append(best)
        if self._n == len(self._vectors):
            self._vectors = np.concatenate([self._vectors, np.zeros_like(self._vectors)])
            self._times = np.concatenate([self._times, np.zeros_like(self._times)])
        self._vectors[self._n] = v
        self._times[self._n] = time_s
        self._segments.append(segment)
        self._n += 1

    def segment_values(self, n_segments: int) -> np.ndarray:
        out = np.full(n_segments, np.nan)
        for k, values in self._best.items():
            if k < n_segments and values:
                out[k] = float(np.mean(values))
        return out

    def similarity_matrix(self, n_segments: int) -> np.ndarray:
        """S[i, j]: how well segments i and j match, symmetrised. For each frame of j its best correlation
        with any frame of i, averaged over j's frames (a replayed segment scores ~1 even when it moves);
        then (S + S^T) / 2. NaN for empty segments. Computed in row blocks: memory O(block x frames)."""
        segments = np.asarray(self._segments, dtype=np.int64)
        inside = segments < n_segments
        vectors, segments = self._vectors[: self._n][inside], segments[inside]
        out = np.full((n_segments, n_segments), np.nan)
        n = segments.size
        if n == 0:
            return out
        order = np.argsort(segments, kind="stable")
        vectors, segments = vectors[order], segments[order]
        present, starts = np.unique(segments, return_index=True)
        rows = np.searchsorted(present, segments)  # row of each frame in the present-segment table
        sums = np.zeros((present.size, present.size))  # sums[j, i]: over j's frames, best match in i
        for lo in range(0, n, SIMILARITY_BLOCK_FRAMES):
            block = slice(lo, lo + SIMILARITY_BLOCK_FRAMES)
            corr = vectors[block] @ vectors.T  # (block, n)
            best = np.maximum.reduceat(corr, starts, axis=1)  # (block, segments)
            np.add.at(sums, rows[block], best)
        counts = np.bincount(rows, minlength=present.size)
        s = sums / np.maximum(counts, 1)[:, None]
        s = 0.5 * (s + s.T)
        out[np.ix_(present, present)] = s
        return out
