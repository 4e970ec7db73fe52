"""Rasterising the toy world: hard-edged shapes over a static background, vectorised over frames.

Edges are hard (a pixel is inside a shape when its centre is), never anti-aliased, so every pixel
of a rendering is exactly the background colour at that pixel or one object colour. That is what
makes the metrics in ``truth.py`` exact: the set of valid renderings is known pixel by pixel.

Every shape test is a sum of a per-row and a per-column term, so masks are built by broadcasting
[T, H, 1] against [T, 1, W] arrays: no per-pixel or per-frame Python loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from memrope.world.palette import background_rgb, object_rgb
from memrope.world.world import CHECKER_CELLS, Trajectory, WorldSpec, WorldState, simulate

RING_INNER_FRACTION = 0.55
"""Inner radius of a ring relative to its outer radius: thick enough (>= 2.6 px at 64x64, small)
to stay a closed ring after rasterisation, thin enough that its hole is a clear shape feature."""

RENDER_CHUNK_FRAMES = 256
"""Frames rasterised per block: bounds temporary memory (~ 8 bytes x T x H x W per array)."""

BACKGROUND_LABEL = -1
"""Label-map value of pixels where no object is visible."""

SQRT3 = math.sqrt(3.0)


def background_image(spec: WorldSpec) -> np.ndarray:
    """The static background, uint8 [H, W, 3].

    plain: the base colour; gradient: rows blend base (top) -> partner (bottom), sampled at row
    centres; checker: square cells of base and partner, ``CHECKER_CELLS`` along the shorter side.
    """
    base, partner = background_rgb(spec.background.colour)
    rows = np.arange(spec.height, dtype=np.float64)
    cols = np.arange(spec.width, dtype=np.float64)
    pattern = spec.background.pattern
    if pattern == "plain":
        weight = np.zeros((spec.height, spec.width))
    elif pattern == "gradient":
        weight = np.broadcast_to(((rows + 0.5) / spec.height)[:, None], (spec.height, spec.width))
    else:  # checker
        cell = min(spec.height, spec.width) / CHECKER_CELLS
        weight = ((np.floor(rows / cell)[:, None] + np.floor(cols / cell)[None, :]) % 2).astype(np.float64)
    image = (1.0 - weight)[..., None] * base + weight[..., None] * partner  # [H, W, 3]
    return np.rint(image).astype(np.uint8)


def shape_mask(shape: str, radius: float, centres: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixels covered by one shape at each of T centres, bool [T, H, W].

    ``centres`` is float [T, 2] in (y, x) pixels. Shapes (r = radius, the box half-extent):
    square |dy|, |dx| <= r; disc d <= r; ring 0.55 r <= d <= r; triangle: equilateral, apex up,
    circumradius r, centroid at the centre (inside when dy <= r/2 and sqrt3 |dx| - dy <= r).
    """
    dy = (np.arange(height, dtype=np.float64) + 0.5)[None, :, None] - centres[:, 0, None, None]  # [T, H, 1]
    dx = (np.arange(width, dtype=np.float64) + 0.5)[None, None, :] - centres[:, 1, None, None]  # [T, 1, W]
    if shape == "square":
        return (np.abs(dy) <= radius) & (np.abs(dx) <= radius)
    if shape == "disc":
        return dy * dy + dx * dx <= radius * radius
    if shape == "ring":
        d2 = dy * dy + dx * dx
        return (d2 <= radius * radius) & (d2 >= (RING_INNER_FRACTION * radius) ** 2)
    if shape == "triangle":
        return (dy <= radius / 2.0) & (SQRT3 * np.abs(dx) - dy <= radius)
    raise ValueError(f"unknown shape {shape!r}")


def object_masks(spec: WorldSpec, positions: np.ndarray) -> np.ndarray:
    """Unoccluded coverage of every object, bool [T, N, H, W], for positions float [T, N, 2]."""
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 3 or positions.shape[1:] != (len(spec.objects), 2):
        raise ValueError(f"positions must be [T, {len(spec.objects)}, 2], got {positions.shape}")
    masks = [
        shape_mask(obj.shape, spec.radius(k), positions[:, k], spec.height, spec.width)
        for k, obj in enumerate(spec.objects)
    ]
    return np.stack(masks, axis=1)


def stack_labels(masks: np.ndarray) -> np.ndarray:
    """Index of the front-most object at each pixel (``BACKGROUND_LABEL`` if none), int8 [T, H, W].

    Objects are painted in spec order over bool masks [T, N, H, W], so later ones occlude earlier
    ones: the label map is exactly the visibility (occlusion) mask of every object.
    """
    labels = np.full((masks.shape[0],) + masks.shape[2:], BACKGROUND_LABEL, dtype=np.int8)
    for k in range(masks.shape[1]):
        labels[masks[:, k]] = k
    return labels


def label_map(spec: WorldSpec, positions: np.ndarray) -> np.ndarray:
    """Front-most object per pixel for positions float [T, N, 2]: int8 [T, H, W] (see ``stack_labels``)."""
    return stack_labels(object_masks(spec, positions))


def paint(spec: WorldSpec, labels: np.ndarray) -> np.ndarray:
    """Colour a label map: uint8 [T, H, W, 3]."""
    colours = np.stack([object_rgb(o.colour) for o in spec.objects]).astype(np.uint8)  # [N, 3]
    background = background_image(spec)  # [H, W, 3]
    objects = colours[np.clip(labels, 0, None)]  # [T, H, W, 3]
    return np.where((labels == BACKGROUND_LABEL)[..., None], background[None], objects)


def render(spec: WorldSpec, positions: np.ndarray) -> np.ndarray:
    """Frames for object positions float [T, N, 2]: uint8 [T, H, W, 3]."""
    blocks = [
        paint(spec, label_map(spec, positions[i : i + RENDER_CHUNK_FRAMES]))
        for i in range(0, len(positions), RENDER_CHUNK_FRAMES)
    ]
    return np.concatenate(blocks, axis=0)


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """A rendered clip with everything the world knows about it.

    frames: uint8 [T, H, W, 3]; labels: int8 [T, H, W], front-most object per pixel (-1 none);
    trajectory: positions / velocities [T, N, 2]; full_area: pixels each object would cover if
    unoccluded, int64 [T, N]; visible_area: pixels where it is front-most, int64 [T, N].
    """

    spec: WorldSpec
    frames: np.ndarray
    labels: np.ndarray
    trajectory: Trajectory
    full_area: np.ndarray
    visible_area: np.ndarray

    def visible_fraction(self) -> np.ndarray:
        """Unoccluded fraction of each object per frame, float [T, N] (1 = fully visible)."""
        return self.visible_area / np.maximum(self.full_area, 1)

    def final_state(self) -> WorldState:
        """The state at the last frame (to continue the video, e.g. after a prompt switch)."""
        return self.trajectory.state(len(self.frames) - 1)


def render_clip(spec: WorldSpec, state: WorldState, n_frames: int) -> GroundTruth:
    """Simulate and render ``n_frames`` frames from ``state`` with full ground truth."""
    trajectory = simulate(spec, state, n_frames)
    frames, labels, full, visible = [], [], [], []
    for i in range(0, n_frames, RENDER_CHUNK_FRAMES):
        masks = object_masks(spec, trajectory.positions[i : i + RENDER_CHUNK_FRAMES])  # [t, N, H, W]
        block = stack_labels(masks)  # [t, H, W]
        frames.append(paint(spec, block))
        labels.append(block)
        full.append(masks.sum(axis=(2, 3)))
        visible.append(np.stack([(block == k).sum(axis=(1, 2)) for k in range(masks.shape[1])], axis=1))
    return GroundTruth(
        spec=spec,
        frames=np.concatenate(frames, axis=0),
        labels=np.concatenate(labels, axis=0),
        trajectory=trajectory,
        full_area=np.concatenate(full, axis=0).astype(np.int64),
        visible_area=np.concatenate(visible, axis=0).astype(np.int64),
    )
