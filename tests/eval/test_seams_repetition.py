"""Seams at a chunk period and loops as repetition."""

from __future__ import annotations

import numpy as np
import pytest

from memrope.eval.analysis import analyze_video
from memrope.eval.config import EvalConfig
from memrope.eval.seams import find_seam_period

from .conftest import FPS, HEIGHT, WIDTH, panning, texture

CHUNK = 12


def test_seams_every_12_frames_are_found_at_period_12(video):
    rng = np.random.default_rng(0)
    frames = []
    for t, f in enumerate(panning(8 * CHUNK * 2, speed=1)):
        if t % CHUNK == 0:
            # each chunk gets its own brightness, alternating in sign with a random size: every seam
            # jumps, by a varying amount
            offset = (-1) ** (t // CHUNK) * int(rng.integers(8, 21))
        frames.append(np.clip(f.astype(int) + offset, 0, 255).astype(np.uint8))
    a = analyze_video(video("seams", frames), EvalConfig(segment_seconds=2.0))
    assert a.seam.detected and a.seam.period == CHUNK
    assert a.seam.phase == 0  # the pair ending at the first frame of each chunk jumps
    assert a.whole["seam_score"] > 2.0
    assert np.all(a.per_segment["seam_score"] > 1.5)


def test_seamless_video_has_no_detected_period(video):
    a = analyze_video(video("pan", panning(8 * CHUNK * 2, speed=2)), EvalConfig(segment_seconds=2.0))
    assert not a.seam.detected
    assert a.whole["seam_score"] < 1.3


def test_known_period_only_searches_the_phase():
    idx = np.arange(1, 200)
    diffs = np.where(idx % 8 == 3, 10.0, 1.0)
    est = find_seam_period(diffs, idx, 4, 48, period=8)
    assert (est.period, est.phase, est.detected) == (8, 3, True)
    free = find_seam_period(diffs, idx, 4, 48)
    assert free.period == 8  # multiples (16, 24, ...) fold as well; the shortest wins


def test_loop_is_detected_as_repetition(video):
    period = 2 * FPS  # the loop replays every 2 s
    n = 8 * FPS
    straight = list(panning(n, speed=4, seed=5))
    looped = [straight[t % period] for t in range(n)]
    config = EvalConfig(segment_seconds=1.0, repetition_min_lag_seconds=1.5, repetition_fps=4.0)
    a_loop = analyze_video(video("loop", looped), config)
    a_line = analyze_video(video("line", straight), config)
    rep_loop, rep_line = a_loop.per_segment["repetition"], a_line.per_segment["repetition"]
    assert np.all(rep_loop[2:] > 0.95)  # from the first replay on
    assert np.all(rep_line[2:] < 0.5)
    # the similarity map shows the loop as off-diagonal stripes at lag 2 segments
    s = a_loop.similarity
    assert s[0, 2] > 0.95 and s[1, 3] > 0.95
    assert a_line.similarity[0, 2] < 0.5


def test_similarity_map_is_symmetric_with_unit_diagonal_for_stills(video):
    frames = [texture(HEIGHT, WIDTH, seed=k) for k in range(3) for _ in range(FPS)]
    a = analyze_video(video("cuts", frames), EvalConfig(segment_seconds=1.0))
    s = a.similarity
    assert np.allclose(s, s.T)
    assert np.allclose(np.diag(s), 1.0, atol=1e-5)  # a still segment correlates perfectly with itself
    assert abs(s[0, 1]) < 0.5
    assert a.per_segment["pixel_anchor_similarity"][0] == pytest.approx(1.0, abs=1e-5)
