"""A trailing partial segment never feeds a drift value: `memrope eval`'s summaries and compare's horizons."""

from __future__ import annotations

import numpy as np

from memrope.compare.evaluation import grid_times, whole_segments
from memrope.eval.analysis import analyze_video
from memrope.eval.config import EvalConfig
from memrope.eval.evaluate import drift_for
from memrope.video import VideoWriter

FPS = 16


def test_a_two_frame_tail_is_left_out_of_drift(tmp_path):
    path = tmp_path / "v.mp4"
    rng = np.random.default_rng(0)
    frames = rng.integers(90, 160, size=(2 * FPS + 2, 32, 32, 3), dtype=np.uint8)
    frames[-2:] = 0  # the tail alone "collapses"
    with VideoWriter(path, fps=FPS) as writer:
        writer.write(frames)
    analysis = analyze_video(path, EvalConfig(segment_seconds=1.0))
    assert analysis.n_segments == 3  # two whole seconds and 2 frames
    drift = drift_for(analysis, {})
    sharpness = analysis.per_segment["sharpness"]
    d = drift["sharpness"]
    assert d.n_segments == 2 and d.last == sharpness[1] and d.last != sharpness[2]


def test_compare_cuts_horizons_to_whole_segments():
    assert whole_segments(10.0, 10.125, 2.0) == (5, 10.0)  # the 0.125 s past the horizon is not evaluated
    assert whole_segments(11.0, 12.0, 2.0) == (5, 10.0)  # a horizon's own partial last second dropped
    assert whole_segments(240.0, 3837 / 16, 2.0) == (119, 238.0)
    assert whole_segments(0.5, 3 / 16, 2.0) == (0, 3 / 16)  # shorter than a segment: all of it, no drift


def test_grid_times_are_log_spaced_and_end_on_the_last_frame():
    times = grid_times(240.0, FPS)
    assert times == [15.0, 30.0, 60.0, 120.0, 240.0 - 1 / FPS]
    assert grid_times(0.25, FPS) == sorted(set(grid_times(0.25, FPS)))  # distinct frames only
