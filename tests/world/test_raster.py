"""Rendering: determinism, exact palette, occlusion by depth order, shape areas, speed."""

import itertools
import math
import time

import numpy as np
import pytest

from memrope.world.palette import (
    BACKGROUND_COLOURS,
    COLOUR_TOLERANCE,
    OBJECT_COLOURS,
    background_rgb,
    object_rgb,
)
from memrope.world.prompts import sample_spec
from memrope.world.raster import (
    BACKGROUND_LABEL,
    RING_INNER_FRACTION,
    background_image,
    render,
    render_clip,
    shape_mask,
)
from memrope.world.world import (
    PATTERNS,
    BackgroundSpec,
    ObjectSpec,
    WorldSpec,
    WorldState,
    initial_state,
    simulate,
)


def test_palette_colours_are_separated_by_twice_the_tolerance():
    colours = {name: object_rgb(name) for name in OBJECT_COLOURS}
    for a, b in itertools.combinations(colours.values(), 2):
        assert np.linalg.norm(a - b) > 2 * COLOUR_TOLERANCE
    for name in BACKGROUND_COLOURS:
        for pattern in PATTERNS:
            spec = WorldSpec(objects=(ObjectSpec("red", "disc"),), background=BackgroundSpec(name, pattern))
            shades = background_image(spec).reshape(-1, 1, 3).astype(np.float64)
            gaps = np.linalg.norm(shades - np.stack(list(colours.values()))[None], axis=-1)
            assert gaps.min() > 2 * COLOUR_TOLERANCE, (name, pattern)


def test_background_patterns():
    obj = (ObjectSpec("red", "disc"),)
    base, partner = background_rgb("navy")
    plain = background_image(WorldSpec(objects=obj, background=BackgroundSpec("navy", "plain")))
    assert np.all(plain == base.astype(np.uint8))
    gradient = background_image(WorldSpec(objects=obj, background=BackgroundSpec("navy", "gradient"))).astype(
        int
    )
    assert np.all(gradient == gradient[:, :1]), "a gradient is constant along rows"
    assert np.all(np.diff(gradient[:, 0, 2]) <= 0), "navy blue fades towards its darker partner"
    checker = background_image(WorldSpec(objects=obj, background=BackgroundSpec("navy", "checker")))
    colours = {tuple(c) for c in checker.reshape(-1, 3)}
    assert colours == {tuple(base.astype(np.uint8)), tuple(partner.astype(np.uint8))}


@pytest.mark.parametrize(
    ("shape", "area"),
    [
        ("square", 4.0),
        ("disc", math.pi),
        ("ring", math.pi * (1 - RING_INNER_FRACTION**2)),
        ("triangle", 3 * math.sqrt(3) / 4),
    ],
)
def test_shape_areas_match_geometry(shape, area):
    radius = 10.0
    centres = np.random.default_rng(0).uniform(20, 44, size=(50, 2))
    pixels = shape_mask(shape, radius, centres, 64, 64).sum(axis=(1, 2))
    np.testing.assert_allclose(pixels, area * radius**2, rtol=0.08)


def test_rendering_is_deterministic_per_seed():
    spec = sample_spec(3)
    a = render_clip(spec, initial_state(spec, 11), 64)
    b = render_clip(spec, initial_state(spec, 11), 64)
    c = render_clip(spec, initial_state(spec, 12), 64)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.frames, c.frames)
    assert np.array_equal(render(spec, a.trajectory.positions), a.frames)


@pytest.mark.parametrize("seed", range(4))
def test_every_pixel_is_background_or_its_object_colour(seed):
    spec = sample_spec(seed, height=80, width=96)
    clip = render_clip(spec, initial_state(spec, seed), 40)
    assert clip.frames.shape == (40, 80, 96, 3) and clip.frames.dtype == np.uint8
    background = background_image(spec)
    is_bg = clip.labels == BACKGROUND_LABEL
    assert np.array_equal(clip.frames[is_bg], np.broadcast_to(background, clip.frames.shape)[is_bg])
    for k, obj in enumerate(spec.objects):
        assert np.all(clip.frames[clip.labels == k] == object_rgb(obj.colour).astype(np.uint8))
    assert np.all(clip.visible_area <= clip.full_area)
    assert np.array_equal(clip.visible_area[:, -1], clip.full_area[:, -1]), "the front object is never hidden"


def test_later_objects_occlude_earlier_ones():
    spec = WorldSpec(objects=(ObjectSpec("red", "square", "large"), ObjectSpec("blue", "disc", "small")))
    state = WorldState(positions=((32.0, 32.0), (32.0, 32.0)), velocities=((2.0, 2.0), (2.0, 2.0)))
    clip = render_clip(spec, state, 1)
    assert tuple(clip.frames[0, 32, 32]) == OBJECT_COLOURS["blue"]
    assert clip.visible_area[0, 0] == clip.full_area[0, 0] - clip.full_area[0, 1]
    assert clip.visible_fraction()[0, 1] == 1.0


def test_render_speed_thousands_of_frames_in_seconds():
    spec = WorldSpec(
        objects=(
            ObjectSpec("red", "disc"),
            ObjectSpec("blue", "square", "large"),
            ObjectSpec("green", "triangle", "small"),
            ObjectSpec("white", "ring"),
        ),
        background=BackgroundSpec("navy", "checker"),
        speed="fast",
    )
    positions = simulate(spec, initial_state(spec, 0), 2000).positions
    start = time.perf_counter()
    frames = render(spec, positions)
    seconds = time.perf_counter() - start
    assert frames.shape == (2000, 64, 64, 3)
    assert seconds < 10.0, f"rendering 2000 frames took {seconds:.2f} s"
