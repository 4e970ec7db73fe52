"""The toy world's specs, states and motion: validation, determinism, exact bouncing."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memrope.world.prompts import sample_spec
from memrope.world.world import (
    MAX_OBJECTS,
    BackgroundSpec,
    ObjectSpec,
    WorldSpec,
    WorldState,
    advance,
    check_state,
    initial_state,
    position_bounds,
    simulate,
)

RED_DISC = ObjectSpec("red", "disc")
BLUE_SQUARE = ObjectSpec("blue", "square", "large")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ObjectSpec("purple", "disc"), "ObjectSpec.colour"),
        (lambda: ObjectSpec("red", "star"), "ObjectSpec.shape"),
        (lambda: ObjectSpec("red", "disc", "huge"), "ObjectSpec.size"),
        (lambda: BackgroundSpec("red"), "BackgroundSpec.colour"),
        (lambda: BackgroundSpec("navy", "stripes"), "BackgroundSpec.pattern"),
        (lambda: WorldSpec(objects=()), "1 to 4 objects"),
        (lambda: WorldSpec(objects=(RED_DISC,) * 2), "distinct"),
        (lambda: WorldSpec(objects=[RED_DISC]), "tuple of ObjectSpec"),
        (
            lambda: WorldSpec(
                objects=tuple(ObjectSpec(c, "disc") for c in ("red", "green", "blue", "cyan", "white"))
            ),
            "1 to 4 objects",
        ),
        (lambda: WorldSpec(objects=(RED_DISC,), speed="warp"), "WorldSpec.speed"),
        (lambda: WorldSpec(objects=(RED_DISC,), height=32), "WorldSpec.height"),
        (lambda: WorldSpec(objects=(RED_DISC,), width=64.0), "WorldSpec.width"),
        (lambda: WorldState(positions=((1.0, 2.0),), velocities=()), "velocities"),
        (lambda: WorldState(positions=((1.0, float("nan")),), velocities=((1.0, 1.0),)), "finite"),
        (lambda: WorldState(positions=(), velocities=(), frame=-1), "WorldState.frame"),
    ],
)
def test_invalid_specs_raise_clear_value_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_state_is_checked_against_its_spec():
    spec = WorldSpec(objects=(RED_DISC, BLUE_SQUARE))
    with pytest.raises(ValueError, match="2"):
        check_state(spec, WorldState(positions=((30.0, 30.0),), velocities=((2.0, 2.0),)))
    with pytest.raises(ValueError, match="leave the frame"):
        check_state(spec, WorldState(positions=((1.0, 30.0), (30.0, 30.0)), velocities=((2.0, 2.0),) * 2))
    with pytest.raises(ValueError, match="band"):
        check_state(spec, WorldState(positions=((20.0, 20.0), (40.0, 40.0)), velocities=((9.0, 2.0),) * 2))
    with pytest.raises(ValueError, match="n_frames"):
        simulate(spec, initial_state(spec, 0), 0)


def test_initial_state_is_deterministic_per_seed_and_valid():
    spec = WorldSpec(objects=(RED_DISC, BLUE_SQUARE, ObjectSpec("green", "ring", "small")), speed="fast")
    assert initial_state(spec, 7) == initial_state(spec, 7)
    assert initial_state(spec, 7) != initial_state(spec, 8)
    for seed in range(20):
        state = initial_state(spec, seed)
        check_state(spec, state)
        pos, radii = state.positions_array(), spec.radii()
        gaps = np.linalg.norm(pos[:, None] - pos[None], axis=-1) - (radii[:, None] + radii[None])
        assert np.all(gaps[~np.eye(len(pos), dtype=bool)] > 0), "objects start apart"


def _reference_bounce(spec, state, n_frames):
    """Independent slow implementation: step one frame at a time, reflecting at the walls."""
    lo, hi = position_bounds(spec)
    pos, vel = state.positions_array(), state.velocities_array()
    out = [pos.copy()]
    for _ in range(n_frames - 1):
        pos = pos + vel
        for _ in range(3):  # a step shorter than the span reflects at most once per wall
            below, above = pos < lo, pos > hi
            pos = np.where(below, 2 * lo - pos, np.where(above, 2 * hi - pos, pos))
            vel = np.where(below | above, -vel, vel)
        out.append(pos.copy())
    return np.stack(out)


@pytest.mark.parametrize("seed", range(5))
def test_closed_form_motion_matches_step_by_step_bouncing(seed):
    spec = sample_spec(seed)
    state = initial_state(spec, seed)
    trajectory = simulate(spec, state, 600)
    np.testing.assert_allclose(trajectory.positions, _reference_bounce(spec, state, 600), atol=1e-9)
    lo, hi = position_bounds(spec)
    assert np.all(trajectory.positions >= lo - 1e-9) and np.all(trajectory.positions <= hi + 1e-9)
    # Elastic bounces keep every per-axis speed.
    np.testing.assert_allclose(
        np.abs(trajectory.velocities), np.abs(state.velocities_array())[None].repeat(600, 0)
    )
    # Velocity is the discrete derivative wherever no bounce happened in between.
    step = np.diff(trajectory.positions, axis=0)
    same = np.sign(trajectory.velocities[1:]) == np.sign(trajectory.velocities[:-1])
    np.testing.assert_allclose(step[same], trajectory.velocities[:-1][same], atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), a=st.integers(0, 300), b=st.integers(0, 300))
def test_advancing_composes(seed, a, b):
    spec = sample_spec(seed)
    state = initial_state(spec, seed)
    direct = advance(spec, state, a + b)
    stepped = advance(spec, advance(spec, state, a), b)
    assert direct.frame == stepped.frame == a + b
    np.testing.assert_allclose(direct.positions_array(), stepped.positions_array(), atol=1e-6)
    np.testing.assert_allclose(direct.velocities_array(), stepped.velocities_array())


def test_frame_size_scales_sizes_and_speeds():
    small = WorldSpec(objects=(RED_DISC,))
    large = WorldSpec(objects=(RED_DISC,), height=128, width=192)
    assert large.radius(0) == pytest.approx(2 * small.radius(0))
    assert large.speed_band() == pytest.approx(tuple(2 * v for v in small.speed_band()))
    four = tuple(ObjectSpec(c, "disc") for c in ("red", "green", "blue", "cyan"))
    assert len(WorldSpec(objects=four).objects) == MAX_OBJECTS
