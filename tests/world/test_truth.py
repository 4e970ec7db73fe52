"""Ground-truth metrics: perfect on renderings, and each one responds to the failure it names."""

import math

import numpy as np
import pytest
import torch

from memrope.world.palette import OBJECT_COLOURS
from memrope.world.prompts import build_world, parse_prompt, sample_spec
from memrope.world.raster import BACKGROUND_LABEL, render, render_clip
from memrope.world.script import render_script
from memrope.world.truth import TruthConfig, evaluate
from memrope.world.world import initial_state

SEGMENT = 16
N_FRAMES = 96
CHANGE = 48  # a segment boundary: segments 0-2 before, 3-5 after
CONFIG = TruthConfig(segment_frames=SEGMENT)
TWO_OBJECTS = "a large blue square and a red disc bounce on a navy gradient, normal"


@pytest.fixture(scope="module")
def two_objects():
    spec, state = build_world(TWO_OBJECTS, 3)
    return spec, render_clip(spec, state, N_FRAMES)


@pytest.mark.parametrize("seed", range(8))
def test_ground_truth_scores_perfectly(seed):
    spec = sample_spec(seed)
    clip = render_clip(spec, initial_state(spec, seed), N_FRAMES)
    report = evaluate(clip.frames, spec, CONFIG)
    assert report.identity.shape == (N_FRAMES // SEGMENT, len(spec.objects))
    assert np.nanmin(report.identity) == 1.0, "occluded frames are hidden, never refuted"
    assert np.mean(np.isnan(report.identity)) < 0.25, "objects are rarely hidden for a whole segment"
    for name in ("present", "shape_ok", "size_ok"):
        assert np.nanmin(getattr(report, name)) == 1.0, name
    for name in ("off_world", "colour_error", "spurious", "background_error"):
        np.testing.assert_array_equal(getattr(report, name), 0.0, err_msg=name)
    assert np.nanmean(report.stagnation) <= 0.02, "only double-wall bounces can look still"
    lo, hi = spec.speed_band()
    slack = 0.15  # bounces shorten a step; rasterised centroids wobble by a fraction of a pixel
    ratio = report.speed_ratio[~np.isnan(report.speed_ratio)]
    assert np.all(ratio >= math.sqrt(2) * lo / spec.nominal_speed() - slack)
    assert np.all(ratio <= math.sqrt(2) * hi / spec.nominal_speed() + slack)
    summary = report.summary()
    assert set(summary) >= {"identity", "displacement", "off_world"} and summary["identity"].shape == (6,)


def _recolour(clip, label, rgb, start):
    frames = clip.frames.copy()
    frames[start:][clip.labels[start:] == label] = rgb
    return frames


def test_colour_change_loses_identity_from_the_right_segment(two_objects):
    spec, clip = two_objects
    report = evaluate(_recolour(clip, 1, OBJECT_COLOURS["green"], CHANGE), spec, CONFIG)
    np.testing.assert_array_equal(report.identity[:3, 1], 1.0)
    np.testing.assert_array_equal(report.identity[3:, 1], 0.0)
    np.testing.assert_array_equal(report.present[3:, 1], 0.0)
    assert np.nanmin(report.identity[:, 0]) == 1.0, "the other object is untouched"
    np.testing.assert_array_equal(report.spurious[:3], 0.0)
    assert np.all(report.spurious[3:] > 0), "an uninvited palette colour is counted as spurious"
    np.testing.assert_array_equal(report.off_world, report.spurious, err_msg="... and it is off-world")


def test_change_inside_a_segment_shows_partially_then_fully():
    spec, state = build_world(TWO_OBJECTS, 3)
    clip = render_clip(spec, state, N_FRAMES)
    report = evaluate(_recolour(clip, 1, (128, 0, 255), CHANGE + SEGMENT // 2), spec, CONFIG)
    np.testing.assert_array_equal(report.identity[:3, 1], 1.0)
    assert report.identity[3, 1] == pytest.approx(0.5)
    np.testing.assert_array_equal(report.identity[4:, 1], 0.0)
    assert report.off_world[2] == 0 and np.all(report.off_world[3:] > 0), "an off-palette colour is off-world"


@pytest.mark.parametrize(
    ("changed", "attribute"),
    [
        ("a large blue square and a red square", "shape_ok"),
        ("a large blue square and a large red disc", "size_ok"),
    ],
)
def test_shape_or_size_change_loses_identity(two_objects, changed, attribute):
    spec, clip = two_objects
    other = parse_prompt(changed + " on a navy gradient")
    frames = clip.frames.copy()
    frames[CHANGE:] = render(other, clip.trajectory.positions[CHANGE:])
    report = evaluate(frames, spec, CONFIG)
    np.testing.assert_array_equal(report.identity[:3, 1], 1.0)
    assert np.nanmax(report.identity[3:, 1]) <= 0.1
    assert np.all(getattr(report, attribute)[3:, 1] <= 0.1)
    np.testing.assert_array_equal(report.present[3:, 1], 1.0, err_msg="the colour is still there")


def test_frozen_video_stagnates(two_objects):
    spec, clip = two_objects
    frozen = np.repeat(clip.frames[:1], N_FRAMES, axis=0)
    report = evaluate(frozen, spec, CONFIG)
    np.testing.assert_array_equal(report.stagnation, 1.0)
    np.testing.assert_array_equal(report.displacement, 0.0)
    np.testing.assert_array_equal(report.identity, 1.0, err_msg="a still frame keeps its identities")
    moving = evaluate(clip.frames, spec, CONFIG)
    assert np.nanmax(moving.stagnation) == 0.0


def test_noise_degrades_fidelity_monotonically(two_objects):
    spec, clip = two_objects
    pattern = np.random.default_rng(0).standard_normal(clip.frames.shape)
    errors, off = [], []
    for sigma in (0, 2, 5, 10, 20, 40, 80):
        noisy = np.clip(np.rint(clip.frames + sigma * pattern), 0, 255).astype(np.uint8)
        report = evaluate(noisy, spec, CONFIG)
        errors.append(report.colour_error)
        off.append(report.off_world)
    errors, off = np.stack(errors), np.stack(off)  # [sigma, segment]
    assert np.all(np.diff(errors, axis=0) > 0), "colour error grows with noise in every segment"
    assert np.all(np.diff(off, axis=0) >= 0) and np.all(off[-1] > 0.5)
    np.testing.assert_array_equal(off[0], 0.0)


def test_blur_degrades_fidelity_monotonically(two_objects):
    spec, clip = two_objects
    errors = []
    for half in range(4):  # box blur of width 2 * half + 1 along both axes
        blurred = clip.frames.astype(np.float64)
        for axis in (1, 2):
            blurred = sum(np.roll(blurred, d, axis=axis) for d in range(-half, half + 1)) / (2 * half + 1)
        errors.append(evaluate(np.rint(blurred).astype(np.uint8), spec, CONFIG).summary()["colour_error"])
    assert np.all(np.diff(np.stack(errors), axis=0) > 0)


def test_soft_edges_keep_identity_and_motion(two_objects):
    """A model's frames have soft edges: a 3x3 blur must not read as lost identity or motion."""
    spec, clip = two_objects
    blurred = clip.frames.astype(np.float64)
    for axis in (1, 2):
        blurred = sum(np.roll(blurred, d, axis=axis) for d in (-1, 0, 1)) / 3
    report = evaluate(np.rint(blurred).astype(np.uint8), spec, CONFIG)
    assert np.nanmean(report.identity) >= 0.9
    assert np.nanmax(report.stagnation) == 0.0
    assert report.off_world.min() > 0, "soft edges are not valid renderings"


def test_a_last_partial_segment_is_scored(two_objects):
    spec, clip = two_objects
    report = evaluate(clip.frames[:90], spec, CONFIG)
    np.testing.assert_array_equal(report.segment_starts, [0, 16, 32, 48, 64, 80])
    assert np.nanmin(report.identity) == 1.0 and report.off_world.shape == (6,)


def test_background_drift_is_measured(two_objects):
    spec, clip = two_objects
    frames = clip.frames.astype(np.int16)
    frames[clip.labels == BACKGROUND_LABEL] += 10
    report = evaluate(frames.astype(np.uint8), spec, CONFIG)
    np.testing.assert_allclose(report.background_error, 10 * math.sqrt(3), rtol=1e-5)
    np.testing.assert_array_equal(report.off_world, 0.0)


def test_prompt_switch_is_scored_against_its_timeline():
    clip = render_script(
        [
            (0, "a red disc and a blue square on a navy background, slow"),
            (CHANGE, "a red disc and a white ring, fast"),
        ],
        seed=5,
        n_frames=N_FRAMES,
    )
    report = evaluate(clip.frames, clip.timeline, CONFIG)
    assert report.identity.shape == (6, 3)
    assert np.all(np.isnan(report.identity[:3, 2])), "the ring does not exist before the switch"
    assert np.nanmin(report.identity) == 1.0
    np.testing.assert_array_equal(report.off_world, 0.0)
    np.testing.assert_array_equal(report.spurious, 0.0)
    ratio = report.summary()["speed_ratio"]
    assert np.all(ratio > 0.7) and np.all(ratio < 1.3), "speed is judged against the spec in force"


def test_input_and_config_validation(two_objects):
    spec, clip = two_objects
    with pytest.raises(ValueError, match="uint8"):
        evaluate(clip.frames.astype(np.float32), spec)
    with pytest.raises(ValueError, match=r"\[T >= 2, 64, 64, 3\]"):
        evaluate(clip.frames[:, :32], spec)
    with pytest.raises(ValueError, match="segment_frames"):
        TruthConfig(segment_frames=1)
    with pytest.raises(ValueError, match="colour_tolerance"):
        TruthConfig(colour_tolerance=100.0)
    with pytest.raises(ValueError, match="min_iou"):
        TruthConfig(min_iou=1.5)
    from_tensor = evaluate(torch.from_numpy(clip.frames), spec, CONFIG)
    np.testing.assert_array_equal(from_tensor.identity, evaluate(clip.frames, spec, CONFIG).identity)
