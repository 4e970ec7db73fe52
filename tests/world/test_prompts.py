"""Prompts: parsing, round trips, sampling, worlds from prompts, and prompt switches."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memrope.world.prompts import (
    VOCABULARY,
    build_world,
    format_prompt,
    parse_prompt,
    sample_prompt,
    sample_spec,
    sample_switch_prompt,
    switch_world,
)
from memrope.world.raster import render_clip
from memrope.world.script import Timeline, render_script
from memrope.world.world import (
    MAX_OBJECTS,
    SPEED_BANDS,
    BackgroundSpec,
    ObjectSpec,
    WorldSpec,
    advance,
    check_state,
)

EXAMPLE = "a red disc and a large blue square bounce on a navy gradient, fast"


def test_parse_example():
    spec = parse_prompt(EXAMPLE)
    assert spec == WorldSpec(
        objects=(ObjectSpec("red", "disc"), ObjectSpec("blue", "square", "large")),
        background=BackgroundSpec("navy", "gradient"),
        speed="fast",
    )
    assert format_prompt(spec) == EXAMPLE


def test_parse_is_case_and_punctuation_insensitive_with_defaults():
    spec = parse_prompt("A Small WHITE ring.", height=96, width=128)
    assert spec == WorldSpec(objects=(ObjectSpec("white", "ring", "small"),), height=96, width=128)
    assert format_prompt(spec) == "a small white ring bounces on a black background, normal"


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_prompts_round_trip(seed):
    spec = sample_spec(seed)
    text = format_prompt(spec)
    assert parse_prompt(text) == spec
    assert format_prompt(parse_prompt(text)) == text
    assert sample_prompt(seed) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a red disk", "unknown word 'disk'.*object colour: .*red"),
        ("a red disc on a purple background", "unknown word 'purple'"),
        ("a disc", "shape 'disc' needs an object colour"),
        ("a red blue disc", "'red' has no shape"),
        ("a red disc and a large", "no shape"),
        ("a red large disc", "size 'large' must come before"),
        ("a red disc on a navy grey background", "background given twice"),
        ("a red disc, fast, slow", "speed given twice"),
        ("on a navy gradient", "names no object"),
        ("a red disc and a red square", "distinct"),
        ("a red disc and a blue disc and a green disc and a cyan disc and a white disc", "1 to 4"),
    ],
)
def test_bad_prompts_raise_clear_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_prompt(text)


def test_vocabulary_lists_every_word_once():
    words = [w for group in VOCABULARY.values() for w in group]
    assert len(words) == len(set(words))


def test_sampled_prompts_cover_the_vocabulary():
    specs = [sample_spec(seed) for seed in range(400)]
    assert {len(s.objects) for s in specs} == set(range(1, MAX_OBJECTS + 1))
    assert {s.speed for s in specs} == set(SPEED_BANDS)
    assert {o.shape for s in specs for o in s.objects} == set(VOCABULARY["shape"])
    assert {s.background.colour for s in specs} == set(VOCABULARY["background colour"])
    assert len({sample_prompt(seed, max_objects=1) for seed in range(50)}) > 40
    with pytest.raises(ValueError, match="max_objects"):
        sample_spec(0, max_objects=5)


def test_build_world_is_deterministic():
    assert build_world(EXAMPLE, 5) == build_world(EXAMPLE, 5)
    assert build_world(EXAMPLE, 5) != build_world(EXAMPLE, 6)


def test_switch_keeps_identities_and_changes_speed_background():
    spec, state = build_world("a red disc and a small blue square on a navy gradient, slow", 1)
    state = advance(spec, state, 37)
    new_spec, new_state = switch_world(
        spec, state, "a small blue square and a red disc on a grey checker, fast", 9
    )
    assert new_spec.objects == spec.objects, "objects keep their order (depth) and attributes"
    assert new_spec.background == BackgroundSpec("grey", "checker") and new_spec.speed == "fast"
    np.testing.assert_array_equal(new_state.positions_array(), state.positions_array())
    assert new_state.frame == state.frame
    old_v, new_v = state.velocities_array(), new_state.velocities_array()
    np.testing.assert_array_equal(np.sign(new_v), np.sign(old_v))
    assert np.all(np.abs(new_v) > np.abs(old_v))
    check_state(new_spec, new_state)


def test_switch_adds_new_objects_in_front_and_refuses_identity_changes():
    spec, state = build_world("a red disc on a navy background", 2)
    new_spec, new_state = switch_world(spec, state, "a red disc and a green ring, slow", 3)
    assert new_spec.objects == (ObjectSpec("red", "disc"), ObjectSpec("green", "ring"))
    check_state(new_spec, new_state)
    with pytest.raises(ValueError, match="keeps identities"):
        switch_world(spec, state, "a large red disc", 3)
    with pytest.raises(ValueError, match="1 to 4"):
        full, full_state = build_world("a red disc and a blue disc and a green disc and a cyan disc", 0)
        switch_world(full, full_state, "a small white disc", 0)


@pytest.mark.parametrize("seed", range(10))
def test_sampled_switch_keeps_objects_and_changes_one_thing(seed):
    spec, state = build_world(sample_prompt(seed), seed)
    text = sample_switch_prompt(spec, seed)
    target = parse_prompt(text)
    assert target.objects[: len(spec.objects)] == spec.objects
    changes = [
        target.speed != spec.speed,
        target.background != spec.background,
        len(target.objects) != len(spec.objects),
    ]
    assert sum(changes) == 1
    new_spec, new_state = switch_world(spec, state, text, seed)
    assert new_spec == target
    check_state(new_spec, new_state)


def test_scripted_video_is_continuous_across_a_switch():
    script = [
        (0, "a red disc and a blue square on a navy background, slow"),
        (20, "a blue square and a red disc, fast"),
    ]
    clip = render_script(script, seed=4, n_frames=40)
    assert clip.frames.shape == (40, 64, 64, 3)
    assert clip.timeline.starts == (0, 20) and clip.timeline.specs[1].speed == "fast"
    np.testing.assert_array_equal(clip.timeline.index_per_frame(40), [0] * 20 + [1] * 20)
    # Up to the switch, the scripted video is exactly the unswitched one.
    spec, state = build_world(script[0][1], 4)
    np.testing.assert_array_equal(clip.frames[:20], render_clip(spec, state, 20).frames)
    # Objects do not jump at the switch: the front object moves one (fast) step from frame 19 to 20.
    blue = [np.argwhere(clip.labels[t] == 1).mean(axis=0) for t in (19, 20)]
    fastest = np.sqrt(2.0) * clip.timeline.specs[1].speed_band()[1]
    assert np.linalg.norm(blue[1] - blue[0]) <= fastest + 1.0


def test_timeline_validation():
    a = parse_prompt("a red disc")
    b = parse_prompt("a blue disc")
    with pytest.raises(ValueError, match="begin at 0"):
        Timeline(starts=(1,), specs=(a,))
    with pytest.raises(ValueError, match="keep the previous spec's objects"):
        Timeline(starts=(0, 5), specs=(a, b))
    with pytest.raises(ValueError, match="frame 0"):
        render_script([(3, "a red disc")], seed=0, n_frames=10)
