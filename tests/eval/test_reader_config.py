"""Lazy reader and config validation."""

from __future__ import annotations

import numpy as np
import pytest

from memrope.eval.config import EvalConfig, stride_for
from memrope.eval.reader import iter_frames, probe_video, scaled_size

from .conftest import FPS, HEIGHT, WIDTH, panning


def test_probe_and_lazy_iteration(video):
    path = video("pan", panning(40))
    info = probe_video(path)
    assert (info.width, info.height, info.fps) == (WIDTH, HEIGHT, FPS)
    frames = iter_frames(path, stride=4, short_side=36)
    first = next(frames)  # a generator: nothing decoded ahead
    assert first.index == 0 and first.rgb.shape == (36, 64, 3) and first.rgb.dtype == np.uint8
    rest = list(frames)
    assert [f.index for f in rest] == list(range(4, 40, 4))
    assert rest[-1].time_s == pytest.approx(36 / FPS)


def test_max_seconds_stops_early(video):
    path = video("pan", panning(40))
    assert len(list(iter_frames(path, max_seconds=1.0))) == FPS


def test_scaled_size_keeps_aspect_and_even_sizes():
    assert scaled_size(832, 480, 240) == (416, 240)
    assert scaled_size(832, 480, 1000) == (832, 480)
    w, h = scaled_size(1280, 721, 100)
    assert h == 100 and w % 2 == 0


def test_stride_follows_vbench_rounding():
    assert stride_for(16, 8) == 2
    assert stride_for(24, 8) == 3
    assert stride_for(5, 8) == 1
    assert stride_for(30, None) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"segment_seconds": 0},
        {"flow_fps": -1},
        {"feature_fps": 0.0},
        {"flow_short_side": 8},
        {"seam_min_period": 10, "seam_max_period": 5},
        {"seam_period": 1},
        {"feature_batch": 0},
        {"segment_seconds": float("nan")},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        EvalConfig(**kwargs)


def test_missing_video_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        probe_video(tmp_path / "nope.mp4")
