"""The toy world: what a scene is (spec), where its objects are (state), and how they move.

A scene is 1-4 flat-coloured objects over a static background. What never changes during a
video - each object's colour, shape and size, its depth order, the background, the speed class -
is the ``WorldSpec``; this is what a prompt describes and what identity metrics check. Where the
objects are and how they move is the ``WorldState``; it is drawn from a seed.

Motion is ballistic with elastic bounces off the frame borders, evaluated in closed form (a
triangle wave of the unbounded position), so frame ``t`` of a video costs the same for t = 10 or
t = 10^6, and a trajectory is exactly reproducible from (spec, state) on any machine. Objects do
not collide with each other; where they overlap, the one later in ``WorldSpec.objects`` is drawn
in front (occlusion by depth order).

Coordinates are continuous pixels, (y, x) order: pixel (i, j) covers [i, i+1) x [j, j+1) and is
sampled at its centre (i + 0.5, j + 0.5). An object's ``radius`` is the half-extent of its
bounding box, so it stays fully inside the frame while its centre stays in [radius, side - radius].

Every object moves at least 1 pixel per frame (x frame scale) along *each* axis (``SPEED_BANDS``
are per axis), so the rasterised mask of an object changes every frame except when it bounces on two
walls at once; the stagnation metric of ``truth.py`` relies on this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from memrope.world.palette import BACKGROUND_COLOURS, OBJECT_COLOURS

SHAPES = ("square", "disc", "triangle", "ring")
"""Object shapes. None is rotation invariant to the others, and objects never rotate."""

SIZE_FRACTIONS: dict[str, float] = {"small": 0.09, "medium": 0.12, "large": 0.16}
"""Object radius (bounding-box half-extent) as a fraction of the shorter frame side.

At 64x64 this is 5.8 / 7.7 / 10.2 px: the smallest triangle still covers ~40 pixels, enough for
the shape moments in ``truth.py`` to tell it from the other shapes. Consecutive sizes differ in
area by a factor >= 1.7, far more than rasterisation changes an area.
"""

SPEED_BANDS: dict[str, tuple[float, float]] = {"slow": (1.0, 1.5), "normal": (1.5, 2.5), "fast": (2.5, 3.5)}
"""Per-axis speed range in pixels per frame at ``REFERENCE_SIDE``, scaled with the frame size.

Per axis rather than per norm so that every object crosses at least one pixel centre per frame
along both axes (see module docstring). Bands touch but do not overlap.
"""

PATTERNS = ("plain", "gradient", "checker")
"""Background patterns: one colour; a vertical gradient base -> partner; a checkerboard of both."""

REFERENCE_SIDE = 64
"""Frame side at which ``SPEED_BANDS`` are given in pixels; other sizes scale them linearly."""

MIN_FRAME_SIDE = 64
"""Smallest frame side: below it the smallest objects are too few pixels for exact shape checks."""

MAX_OBJECTS = 4
"""Most objects in one scene (one per colour; the palette has 8, prompts stay short)."""

CHECKER_CELLS = 8
"""Checkerboard cells along the shorter frame side."""

PLACEMENT_ATTEMPTS = 1000
"""Rejection-sampling attempts to place objects without initial overlap before giving up."""


@dataclass(frozen=True)
class ObjectSpec:
    """The persistent identity of one object: colour, shape and size words."""

    colour: str
    shape: str
    size: str = "medium"

    def __post_init__(self) -> None:
        if self.colour not in OBJECT_COLOURS:
            raise ValueError(f"ObjectSpec.colour {self.colour!r} is not one of {sorted(OBJECT_COLOURS)}")
        if self.shape not in SHAPES:
            raise ValueError(f"ObjectSpec.shape {self.shape!r} is not one of {list(SHAPES)}")
        if self.size not in SIZE_FRACTIONS:
            raise ValueError(f"ObjectSpec.size {self.size!r} is not one of {list(SIZE_FRACTIONS)}")


@dataclass(frozen=True)
class BackgroundSpec:
    """A static background: a colour word (with its fixed partner shade) and a pattern."""

    colour: str = "black"
    pattern: str = "plain"

    def __post_init__(self) -> None:
        if self.colour not in BACKGROUND_COLOURS:
            raise ValueError(
                f"BackgroundSpec.colour {self.colour!r} is not one of {sorted(BACKGROUND_COLOURS)}"
            )
        if self.pattern not in PATTERNS:
            raise ValueError(f"BackgroundSpec.pattern {self.pattern!r} is not one of {list(PATTERNS)}")


@dataclass(frozen=True)
class WorldSpec:
    """Everything about a scene that stays fixed during a video (between prompt switches).

    ``objects`` are in depth order: later objects are drawn in front of earlier ones.
    """

    objects: tuple[ObjectSpec, ...]
    background: BackgroundSpec = BackgroundSpec()
    speed: str = "normal"
    height: int = REFERENCE_SIDE
    width: int = REFERENCE_SIDE

    def __post_init__(self) -> None:
        if not isinstance(self.objects, tuple) or not all(isinstance(o, ObjectSpec) for o in self.objects):
            raise ValueError("WorldSpec.objects must be a tuple of ObjectSpec")
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"WorldSpec needs 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")
        colours = [o.colour for o in self.objects]
        if len(set(colours)) != len(colours):
            raise ValueError(
                f"WorldSpec object colours must be distinct (colour identifies an object), got {colours}"
            )
        if not isinstance(self.background, BackgroundSpec):
            raise ValueError("WorldSpec.background must be a BackgroundSpec")
        if self.speed not in SPEED_BANDS:
            raise ValueError(f"WorldSpec.speed {self.speed!r} is not one of {list(SPEED_BANDS)}")
        for name in ("height", "width"):
            side = getattr(self, name)
            if not isinstance(side, int) or side < MIN_FRAME_SIDE:
                raise ValueError(f"WorldSpec.{name} must be an int >= {MIN_FRAME_SIDE}, got {side!r}")

    @property
    def scale(self) -> float:
        """Frame size relative to ``REFERENCE_SIDE`` (shorter side)."""
        return min(self.height, self.width) / REFERENCE_SIDE

    def radius(self, index: int) -> float:
        """Bounding-box half-extent of object ``index`` in pixels."""
        return SIZE_FRACTIONS[self.objects[index].size] * min(self.height, self.width)

    def radii(self) -> np.ndarray:
        """Radii of all objects, float64 [N]."""
        return np.array([self.radius(i) for i in range(len(self.objects))], dtype=np.float64)

    def speed_band(self) -> tuple[float, float]:
        """(min, max) per-axis speed in pixels per frame for this frame size."""
        lo, hi = SPEED_BANDS[self.speed]
        return lo * self.scale, hi * self.scale

    def nominal_speed(self) -> float:
        """Expected displacement per frame (pixels) of an object: the band centre on both axes."""
        lo, hi = self.speed_band()
        return math.sqrt(2.0) * (lo + hi) / 2.0


@dataclass(frozen=True)
class WorldState:
    """Positions and velocities of every object at one frame, (y, x) pixels and pixels/frame.

    Stored as tuples so that states are hashable and compare exactly; ``positions_array`` and
    ``velocities_array`` give float64 [N, 2] copies.
    """

    positions: tuple[tuple[float, float], ...]
    velocities: tuple[tuple[float, float], ...]
    frame: int = 0

    def __post_init__(self) -> None:
        if len(self.positions) != len(self.velocities):
            raise ValueError(
                f"WorldState has {len(self.positions)} positions but {len(self.velocities)} velocities"
            )
        for name in ("positions", "velocities"):
            for pair in getattr(self, name):
                if len(pair) != 2 or not all(math.isfinite(v) for v in pair):
                    raise ValueError(f"WorldState.{name} entries must be finite (y, x) pairs, got {pair!r}")
        if not isinstance(self.frame, int) or self.frame < 0:
            raise ValueError(f"WorldState.frame must be an int >= 0, got {self.frame!r}")

    @classmethod
    def from_arrays(cls, positions: np.ndarray, velocities: np.ndarray, frame: int = 0) -> WorldState:
        """Build from float arrays [N, 2]."""
        pos = np.asarray(positions, dtype=np.float64)
        vel = np.asarray(velocities, dtype=np.float64)
        if pos.ndim != 2 or pos.shape[1] != 2 or vel.shape != pos.shape:
            raise ValueError(f"positions and velocities must both be [N, 2], got {pos.shape}, {vel.shape}")
        return cls(
            positions=tuple((float(y), float(x)) for y, x in pos),
            velocities=tuple((float(y), float(x)) for y, x in vel),
            frame=frame,
        )

    def positions_array(self) -> np.ndarray:
        return np.array(self.positions, dtype=np.float64).reshape(-1, 2)

    def velocities_array(self) -> np.ndarray:
        return np.array(self.velocities, dtype=np.float64).reshape(-1, 2)


@dataclass(frozen=True, eq=False)
class Trajectory:
    """Per-frame positions and velocities, float64 [T, N, 2], of frames start .. start + T - 1."""

    positions: np.ndarray
    velocities: np.ndarray
    start: int

    def state(self, t: int) -> WorldState:
        """The state at row ``t`` (absolute frame ``start + t``)."""
        return WorldState.from_arrays(self.positions[t], self.velocities[t], frame=self.start + t)


def position_bounds(spec: WorldSpec) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest centre coordinate of each object, float64 [N, 2] each.

    A centre outside these bounds would put part of the object outside the frame.
    """
    radii = spec.radii()[:, None]  # [N, 1]
    sides = np.array([spec.height, spec.width], dtype=np.float64)[None, :]  # [1, 2]
    return np.broadcast_to(radii, (len(radii), 2)).copy(), sides - radii


def check_state(spec: WorldSpec, state: WorldState) -> None:
    """ValueError unless ``state`` has one in-bounds object per spec object and in-band speeds."""
    if len(state.positions) != len(spec.objects):
        raise ValueError(f"state has {len(state.positions)} objects but the spec has {len(spec.objects)}")
    lo, hi = position_bounds(spec)
    pos = state.positions_array()
    if np.any(pos < lo - 1e-9) or np.any(pos > hi + 1e-9):
        raise ValueError(
            f"state positions {pos.tolist()} leave the frame; bounds are {lo.tolist()}..{hi.tolist()}"
        )
    band_lo, band_hi = spec.speed_band()
    speed = np.abs(state.velocities_array())
    if np.any(speed < band_lo - 1e-9) or np.any(speed > band_hi + 1e-9):
        raise ValueError(
            f"state per-axis speeds {speed.tolist()} are outside the {spec.speed!r} band "
            f"[{band_lo}, {band_hi}] px/frame"
        )


def initial_state(spec: WorldSpec, seed: int) -> WorldState:
    """Draw non-overlapping start positions and in-band velocities, deterministically from ``seed``.

    Inscribed circles of the bounding boxes (radius = half-extent) do not overlap at frame 0, so
    objects start apart: at most the corners of two squares overlap.
    """
    rng = np.random.default_rng(seed)
    lo, hi = position_bounds(spec)
    radii = spec.radii()
    for _ in range(PLACEMENT_ATTEMPTS):
        pos = rng.uniform(lo, hi)  # [N, 2]
        if _disjoint(pos, radii):
            break
    else:
        raise ValueError(
            f"could not place {len(radii)} objects without overlap; use fewer or smaller objects"
        )
    band_lo, band_hi = spec.speed_band()
    magnitude = rng.uniform(band_lo, band_hi, size=pos.shape)
    sign = rng.choice(np.array([-1.0, 1.0]), size=pos.shape)
    return WorldState.from_arrays(pos, sign * magnitude, frame=0)


def _disjoint(pos: np.ndarray, radii: np.ndarray) -> bool:
    """True when no two circles of the objects' radii overlap."""
    gap = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1) - (radii[:, None] + radii[None, :])
    np.fill_diagonal(gap, np.inf)
    return bool(np.all(gap > 0))


def simulate(spec: WorldSpec, state: WorldState, n_frames: int) -> Trajectory:
    """Positions and velocities for ``n_frames`` frames starting at ``state`` (row 0 is ``state``).

    Closed form: an unbounded coordinate u = p0 + v t folded into [lo, hi] by a triangle wave of
    period 2 (hi - lo) is exactly an elastic bounce between the walls; the velocity sign flips on
    the descending half of the wave.
    """
    if not isinstance(n_frames, int) or n_frames < 1:
        raise ValueError(f"n_frames must be an int >= 1, got {n_frames!r}")
    check_state(spec, state)
    lo, hi = position_bounds(spec)  # [N, 2]
    span = hi - lo
    p0 = state.positions_array() - lo
    v0 = state.velocities_array()
    t = np.arange(n_frames, dtype=np.float64)[:, None, None]  # [T, 1, 1]
    phase = np.mod(p0[None] + v0[None] * t, 2.0 * span[None])  # [T, N, 2]
    rising = phase <= span[None]
    positions = lo[None] + np.where(rising, phase, 2.0 * span[None] - phase)
    velocities = np.where(rising, v0[None], -v0[None])
    return Trajectory(positions=positions, velocities=velocities, start=state.frame)


def advance(spec: WorldSpec, state: WorldState, n_frames: int) -> WorldState:
    """The state ``n_frames`` frames after ``state``."""
    if n_frames == 0:
        return state
    return simulate(spec, state, n_frames + 1).state(n_frames)
