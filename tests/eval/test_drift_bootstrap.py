"""Drift protocol and cross-video statistics: closed forms and a colour-drift video."""

from __future__ import annotations

import numpy as np
import pytest

from memrope.eval.analysis import analyze_video
from memrope.eval.bootstrap import bootstrap_mean_ci, paired_bootstrap
from memrope.eval.config import EvalConfig
from memrope.eval.drift import drift_summary, least_squares_slope

from .conftest import FPS, HEIGHT, WIDTH


def test_linear_curve_closed_form():
    t = np.arange(10) * 6.0  # segment starts every 6 s
    v = 1.0 - 0.02 * t / 6.0  # loses 0.02 per segment = 0.2 per minute
    d = drift_summary(t, v, threshold=0.9, falling=True)
    assert d.slope_per_minute == pytest.approx(-0.2)
    assert d.change == pytest.approx(-0.18)
    assert d.time_to_threshold_s == pytest.approx(30.0)  # 1 - 0.02 * 5 = 0.9
    assert d.largest_drop == pytest.approx(0.02)


def test_largest_drop_and_nan_segments():
    t = np.arange(6.0)
    v = np.array([1.0, 1.0, np.nan, 0.4, 0.5, 0.45])
    d = drift_summary(t, v, threshold=2.0, falling=False)
    assert d.largest_drop == pytest.approx(0.6) and d.largest_drop_time_s == 3.0
    assert d.time_to_threshold_s is None and d.n_segments == 5


def test_slope_needs_two_points():
    assert np.isnan(least_squares_slope(np.array([1.0]), np.array([2.0])))
    with pytest.raises(ValueError):
        drift_summary(np.arange(3.0), np.arange(4.0))


def test_linear_colour_drift_video_gives_slope_sign_and_time_to_threshold(video):
    seconds = 6
    n = seconds * FPS
    # red rises linearly from 40 to 220 over the video; green and blue stay put
    frames = []
    for i in range(n):
        f = np.full((HEIGHT, WIDTH, 3), 100, np.uint8)
        f[..., 0] = round(40 + 180 * i / (n - 1))
        frames.append(f)
    a = analyze_video(video("redshift", frames), EvalConfig(segment_seconds=1.0))
    red = a.per_segment["mean_red"]
    d = drift_summary(a.segment_start_s, red, threshold=0.5, falling=False)
    assert d.slope_per_minute > 0 and d.change > 0.5
    # expected: red/255 >= 0.5 first in the segment whose mean exceeds 127.5
    expected = next(k for k in range(len(red)) if red[k] >= 0.5)
    assert d.time_to_threshold_s == pytest.approx(a.segment_start_s[expected])
    assert 2.0 <= d.time_to_threshold_s <= 3.0  # mean red crosses 127.5 near t = 2.9 s
    green = drift_summary(a.segment_start_s, a.per_segment["mean_green"])
    assert abs(green.slope_per_minute) < 1e-3
    hist = drift_summary(a.segment_start_s, a.per_segment["histogram_drift"])
    assert hist.first == pytest.approx(0.0, abs=1e-6) and hist.slope_per_minute > 0


def test_bootstrap_ci_contains_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = rng.normal(0.8, 0.05, size=8)
    large = rng.normal(0.8, 0.05, size=200)
    e_small, e_large = bootstrap_mean_ci(small), bootstrap_mean_ci(large)
    assert e_small.low <= e_small.mean <= e_small.high
    assert e_large.low <= 0.8 <= e_large.high
    assert (e_large.high - e_large.low) < (e_small.high - e_small.low)
    assert bootstrap_mean_ci([0.5]).low == bootstrap_mean_ci([0.5]).high == 0.5
    assert bootstrap_mean_ci([0.1, 0.2], seed=3) == bootstrap_mean_ci([0.1, 0.2], seed=3)  # reproducible


def test_paired_bootstrap_sees_a_consistent_difference_hidden_by_prompt_variance():
    rng = np.random.default_rng(2)
    prompt_level = rng.normal(0.7, 0.1, size=12)  # large spread across prompts
    a = prompt_level + 0.02  # method a is better on every prompt by a little
    b = prompt_level.copy()
    c = paired_bootstrap(a, b, "a", "b")
    assert c.difference.mean == pytest.approx(0.02)
    assert c.difference.low > 0 and c.p_value < 0.01
    # unpaired CIs overlap almost entirely: pairing is what makes the difference visible
    ea, eb = bootstrap_mean_ci(a), bootstrap_mean_ci(b)
    assert ea.low < eb.high
    same = paired_bootstrap(b + rng.normal(0, 0.01, 12), b)
    assert same.difference.low <= 0 <= same.difference.high
    with pytest.raises(ValueError):
        paired_bootstrap([1, 2], [1])
