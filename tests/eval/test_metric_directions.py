"""Weight-free metrics point the right way on synthetic videos with known content."""

from __future__ import annotations

import numpy as np
import pytest

from memrope.eval.analysis import analyze_video
from memrope.eval.config import EvalConfig
from memrope.eval.drift import drift_summary
from memrope.eval.flicker import flicker_score, mean_abs_diff
from memrope.eval.motion import dynamic_threshold, required_moving_pairs, top_fraction_mean

from .conftest import FPS, HEIGHT, WIDTH, panning, texture

SEGMENT_S = 1.0
CONFIG = EvalConfig(segment_seconds=SEGMENT_S, repetition_min_lag_seconds=1.0)


def test_static_video_has_flicker_one_and_no_motion(video):
    still = texture(HEIGHT, WIDTH, seed=3)
    a = analyze_video(video("static", [still] * (3 * FPS)), CONFIG)
    assert a.whole["temporal_flickering"] == pytest.approx(1.0, abs=1e-9)
    assert np.all(a.per_segment["temporal_flickering"] == pytest.approx(1.0, abs=1e-9))
    assert a.whole["dynamic_degree_dis"] == 0.0
    assert a.whole["motion_magnitude"] < 0.05
    assert a.whole["motion_smoothness_dis"] == pytest.approx(1.0, abs=1e-3)
    assert a.whole["warp_error"] < 1e-3
    assert np.nanmax(a.per_segment["histogram_drift"]) < 1e-6
    assert a.whole["seam_score"] == pytest.approx(1.0, abs=1e-6)


def test_constant_motion_is_dynamic_with_the_right_speed(video):
    speed = 3
    a = analyze_video(video("pan", panning(3 * FPS, speed=speed)), CONFIG)
    assert np.all(a.per_segment["dynamic_degree_dis"] == 1.0)
    assert a.whole["motion_magnitude"] == pytest.approx(speed, rel=0.1)
    assert a.whole["temporal_flickering"] < 1.0
    # uniform translation is exactly interpolable and exactly warpable
    assert a.whole["motion_smoothness_dis"] > 0.97
    assert a.whole["warp_error"] < 0.01


def test_freeze_halfway_shows_the_motion_drop_at_the_right_segment(video):
    moving = list(panning(2 * FPS, speed=4))
    frames = moving + [moving[-1]] * (2 * FPS)
    a = analyze_video(video("freeze", frames), CONFIG)
    dyn = a.per_segment["dynamic_degree_dis"]
    assert list(dyn) == [1.0, 1.0, 0.0, 0.0]
    drift = drift_summary(a.segment_start_s, a.per_segment["motion_magnitude"])
    assert drift.largest_drop_time_s == pytest.approx(2 * SEGMENT_S)
    assert drift.largest_drop > 3.0 and drift.slope_per_minute < 0
    # flicker recovers to 1 once frozen
    assert a.per_segment["temporal_flickering"][-1] == pytest.approx(1.0)


def test_noise_flickers_more_than_a_still_frame(video):
    rng = np.random.default_rng(0)
    base = texture(HEIGHT, WIDTH)
    noisy = [
        np.clip(base.astype(int) + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
        for _ in range(FPS)
    ]
    a_noisy = analyze_video(video("noisy", noisy), CONFIG)
    a_still = analyze_video(video("still", [base] * FPS), CONFIG)
    assert a_noisy.whole["temporal_flickering"] < a_still.whole["temporal_flickering"] - 0.02


def test_blur_lowers_sharpness(video):
    import cv2

    base = texture(HEIGHT, WIDTH, seed=1)
    frames = [cv2.GaussianBlur(base, (0, 0), 0.3 + 0.15 * t) for t in range(3 * FPS)]
    a = analyze_video(video("blur", frames), CONFIG)
    s = a.per_segment["sharpness"]
    assert s[0] > s[1] > s[2]
    assert drift_summary(a.segment_start_s, s).slope_per_minute < 0


def test_flicker_formula_and_vbench_dynamic_rule():
    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((4, 4, 3), 51, np.uint8)
    assert mean_abs_diff(a, b) == 51
    assert flicker_score(51) == pytest.approx(0.8)
    assert dynamic_threshold(256, 512) == pytest.approx(6.0)  # 6 * min(H, W) / 256
    assert required_moving_pairs(16) == 4 and required_moving_pairs(2) == 1
    values = np.arange(100, dtype=float)
    assert top_fraction_mean(values) == pytest.approx(np.mean([95, 96, 97, 98, 99]))
