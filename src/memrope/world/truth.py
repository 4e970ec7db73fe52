"""Exact ground-truth metrics of a video of the toy world, per segment so that drift shows.

Why these are exact: a valid rendering of a spec (``raster.py``) contains, at each pixel, either
the known background colour of that pixel or one of the spec's object colours, and all palette
colours are more than ``2 x COLOUR_TOLERANCE`` apart (``palette.py``). So every pixel of any video
can be assigned without ambiguity to the background, to one object (by colour, each object's colour
is unique), to a palette colour the prompt never mentioned, or to nothing valid. Each object's
shape and size are known, so its pixels can be compared with the exact template it must match.
Nothing here is learned or approximate; on a ground-truth rendering every score below is at its
ideal value up to the documented rasterisation effects.

Per-pixel distances to the colours valid at that pixel give the frame-level metrics:

- ``off_world``: fraction of pixels further than the tolerance from every colour valid at that
  pixel (its background shade, the spec's object colours): the distance of the frame to the set of
  valid renderings, counted in pixels. 0 for a rendering.
- ``colour_error``: mean RGB distance of a pixel to the nearest valid colour at that pixel; the
  same distance, graded (noise, blur and washed-out colours raise it before they cross the
  tolerance). 0 for a rendering.
- ``spurious``: fraction of pixels showing a palette colour the prompt did not ask for: objects a
  model invents (these pixels are off-world too). 0 for a rendering.
- ``background_error``: mean RGB distance to the true background over pixels assigned to the
  background: background drift (colour shift, lost gradient or checker texture). 0 for a rendering.

Per object, its pixels are those that show its colour, or a mix of background and its colour at
least half-way towards it (soft or blurred edges; ``_mixes_with_background``), nearer to it than
to any other palette colour that also explains them; they are restricted to a window around their
median so that stray pixels elsewhere do not move its centre. Per frame:

- present: its colour covers at least ``presence_fraction`` of its template area;
- template match: the mask is compared (IoU) with the 12 templates (4 shapes x 3 sizes) centred on
  its centroid; ``shape_ok`` / ``size_ok`` when the best template has the spec's shape / size;
  ``matched`` when it is present, the best template is the spec's own, and its IoU reaches
  ``min_iou``;
- hidden: not matched, but at some placement its template both contains its own pixels and lies
  inside its own pixels plus those of the objects in front of it (each up to ``HIDDEN_SLACK``):
  the frame is consistent with the object being there behind its occluders, so it can be neither
  confirmed nor refuted. Every other
  unmatched frame *refutes* the object (wrong colour, shape or size, or gone with nothing in front
  that could hide it).

Per segment (``segment_frames`` frames; a motion step t-1 -> t belongs to the segment of t):

- ``identity``: matched frames / judged frames (matched or refuted), NaN when the object is hidden
  on every frame of the segment. 1 for a rendering (occluded frames are hidden, never refuted);
  an object whose colour, shape or size drifts scores 0 from the first segment it has changed.
- ``hidden``: fraction of the segment's frames where the object is hidden.
- ``present``, ``shape_ok``, ``size_ok``: fractions of the judged frames (shape and size over the
  judged frames where it is present) with that attribute right: which attribute drifted. 1 (or NaN)
  for a rendering.
- ``displacement``: mean centroid displacement per frame, pixels, over steps whose two frames are
  both matched (a partly hidden object's visible centroid moves for reasons other than motion).
- ``stagnation``: fraction of those steps that move less than ``stagnant_px``. Every object of the
  world moves >= 1 px per frame on each axis (``world.SPEED_BANDS``), so a rendering's mask
  changes every frame and this is 0, except on the rare frame where an object bounces off two
  walls at once (its net step can round to < 0.5 px); a frozen video gives 1.
- ``speed_ratio``: displacement / the spec's nominal speed (centre of its speed band); a rendering
  lies in the band ratio range (e.g. 0.8-1.2 for ``slow``) minus bounces.

Objects that are not in the scene yet (added by a later prompt switch) are NaN in every per-object
array. Segment means in ``summary`` ignore NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from memrope.world.palette import COLOUR_TOLERANCE, OBJECT_COLOURS
from memrope.world.raster import background_image, shape_mask
from memrope.world.script import Timeline
from memrope.world.world import SHAPES, SIZE_FRACTIONS, WorldSpec

DEFAULT_SEGMENT_FRAMES = 16
"""Frames per segment: enough frames that an object is rarely hidden on all of them (identity NaN),
few enough that a 10x-training-window video still gives a drift curve of many points."""

PRESENCE_FRACTION = 0.5
"""An object is present when its colour covers at least this fraction of its template area."""

MIN_IOU = 0.75
"""Smallest template IoU of a recognisable object. A fully visible rendered object scores >= ~0.85
(sub-pixel centroid error); the closest wrong template (a disc for its square, a ring's disc) <= 0.79
is rejected by the argmax before this threshold matters."""

STAGNANT_PX = 0.5
"""A step moving less than this many pixels counts as no motion (half the smallest per-axis step)."""

WINDOW_FACTOR = 1.6
"""Half-size of the window around an object's median pixel, in radii: covers the whole shape (the
triangle's apex is 1 radius from its centroid, the median can sit ~0.3 radius off) while excluding
same-coloured stray pixels elsewhere."""

HIDDEN_SLACK = 0.2
"""Largest fraction of a template that may fall outside the object's own and its occluders' pixels
when judging whether it could be hidden: absorbs the rasterisation difference between the true
sub-pixel position and the nearest tested placement (a quarter pixel on each axis)."""

MIX_THRESHOLD = 0.5
"""Weight towards an object colour from which a background/object mixture counts as the object:
half-way, where a symmetric blur of a hard edge crosses the true edge."""

SUBPIXEL_OFFSETS = ((0.0, 0.0), (0.0, 0.5), (0.5, 0.0), (0.5, 0.5))
"""Offsets (dy, dx) added to pixel-centre placements when searching where a hidden object may be."""

EVAL_CHUNK_FRAMES = 64
"""Frames processed per block, bounding temporary memory to ~100 MB at 64x64."""

_PALETTE = tuple(OBJECT_COLOURS)
_PALETTE_RGB = np.array([OBJECT_COLOURS[c] for c in _PALETTE], dtype=np.float64)  # [P, 3]


@dataclass(frozen=True)
class TruthConfig:
    """Thresholds of the metrics (see the module docstring for what each one decides)."""

    segment_frames: int = DEFAULT_SEGMENT_FRAMES
    colour_tolerance: float = COLOUR_TOLERANCE
    presence_fraction: float = PRESENCE_FRACTION
    min_iou: float = MIN_IOU
    stagnant_px: float = STAGNANT_PX

    def __post_init__(self) -> None:
        if not isinstance(self.segment_frames, int) or self.segment_frames < 2:
            raise ValueError(f"TruthConfig.segment_frames must be an int >= 2, got {self.segment_frames!r}")
        if not 0 < self.colour_tolerance <= COLOUR_TOLERANCE:
            raise ValueError(
                f"TruthConfig.colour_tolerance must be in (0, {COLOUR_TOLERANCE}] so that no pixel is "
                f"near two palette colours, got {self.colour_tolerance}"
            )
        for name in ("presence_fraction", "min_iou"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"TruthConfig.{name} must be in (0, 1], got {value}")
        if self.stagnant_px <= 0:
            raise ValueError(f"TruthConfig.stagnant_px must be > 0, got {self.stagnant_px}")


@dataclass(frozen=True, eq=False)
class TruthReport:
    """Per-segment metrics. Per-object arrays are float [S, N] over the final spec's objects
    (NaN before an object exists); frame-level arrays are float [S]."""

    segment_starts: np.ndarray
    identity: np.ndarray
    hidden: np.ndarray
    present: np.ndarray
    shape_ok: np.ndarray
    size_ok: np.ndarray
    displacement: np.ndarray
    stagnation: np.ndarray
    speed_ratio: np.ndarray
    off_world: np.ndarray
    colour_error: np.ndarray
    spurious: np.ndarray
    background_error: np.ndarray

    def summary(self) -> dict[str, np.ndarray]:
        """Every metric as float [S]: per-object ones averaged over the objects present (NaN-aware)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "segment_starts" and value.ndim == 2:
                value = _nanmean(value, axis=1)
            out[f.name] = value
        return out


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    """Mean ignoring NaN; NaN (without a warning) where everything is NaN."""
    count = np.sum(~np.isnan(x), axis=axis)
    total = np.nansum(x, axis=axis)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _as_frames(frames: np.ndarray | torch.Tensor, spec: WorldSpec) -> np.ndarray:
    """Validate a video as uint8 [T, H, W, 3] for the spec's frame size."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got dtype {frames.dtype}")
    expected = (spec.height, spec.width, 3)
    if frames.ndim != 4 or frames.shape[1:] != expected or frames.shape[0] < 2:
        raise ValueError(
            f"frames must be [T >= 2, {spec.height}, {spec.width}, 3], got {tuple(frames.shape)}"
        )
    return frames


def _templates(spec: WorldSpec) -> tuple[list[tuple[str, str]], np.ndarray]:
    """The (shape, size) template list and their radii for the spec's frame size."""
    pairs = [(shape, size) for shape in SHAPES for size in SIZE_FRACTIONS]
    radii = np.array([SIZE_FRACTIONS[size] * min(spec.height, spec.width) for _, size in pairs])
    return pairs, radii


def _template_area(shape: str, radius: float, spec: WorldSpec) -> float:
    """Pixels a shape covers, rendered at the frame centre."""
    centre = np.array([[spec.height / 2.0, spec.width / 2.0]])
    return float(shape_mask(shape, radius, centre, spec.height, spec.width).sum())


def _object_frames(
    mask: np.ndarray, spec: WorldSpec, k: int, config: TruthConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame present, shape_ok, size_ok, matched (bool [t]) and centroid (float [t, 2]).

    ``mask`` is bool [t, H, W]: pixels assigned to object k's colour.
    """
    obj = spec.objects[k]
    radius = spec.radius(k)
    ys = np.arange(spec.height, dtype=np.float64) + 0.5
    xs = np.arange(spec.width, dtype=np.float64) + 0.5
    # Window around the median pixel: robust to same-coloured stray pixels elsewhere.
    rows, cols = mask.sum(axis=2), mask.sum(axis=1)  # [t, H], [t, W]
    area = rows.sum(axis=1)  # [t]
    half = np.maximum(area, 1)[:, None] / 2.0
    med_y = ys[np.argmax(np.cumsum(rows, axis=1) >= half, axis=1)]  # [t]
    med_x = xs[np.argmax(np.cumsum(cols, axis=1) >= half, axis=1)]
    reach = WINDOW_FACTOR * radius
    inside = (np.abs(ys[None, :] - med_y[:, None]) <= reach)[:, :, None] & (
        np.abs(xs[None, :] - med_x[:, None]) <= reach
    )[:, None, :]
    mask = mask & inside  # [t, H, W]
    rows, cols = mask.sum(axis=2), mask.sum(axis=1)
    area = rows.sum(axis=1).astype(np.float64)
    safe = np.maximum(area, 1.0)
    centroid = np.stack([rows @ ys / safe, cols @ xs / safe], axis=1)  # [t, 2]
    present = area >= config.presence_fraction * _template_area(obj.shape, radius, spec)
    pairs, radii = _templates(spec)
    iou = np.empty((len(mask), len(pairs)))
    for j, ((shape, _), r) in enumerate(zip(pairs, radii, strict=True)):
        template = shape_mask(shape, float(r), centroid, spec.height, spec.width)  # [t, H, W]
        inter = (template & mask).sum(axis=(1, 2))
        iou[:, j] = inter / np.maximum(template.sum(axis=(1, 2)) + area - inter, 1.0)
    best = np.argmax(iou, axis=1)  # [t]
    own = pairs.index((obj.shape, obj.size))
    shape_ok = np.array([shape for shape, _ in pairs])[best] == obj.shape
    size_ok = np.array([size for _, size in pairs])[best] == obj.size
    matched = present & (best == own) & (iou[:, own] >= config.min_iou)
    return present, shape_ok, size_ok, matched, centroid


def _kernel(shape: str, radius: float) -> torch.Tensor:
    """A shape's template at the ``SUBPIXEL_OFFSETS`` as conv2d weights float32 [Q, 1, S, S].

    S is odd; correlating a map with output channel q at pixel (y, x) sums the map over the
    template centred at (y + 0.5 + dy_q, x + 0.5 + dx_q), i.e. pixel centres plus the offset.
    """
    side = 2 * int(np.ceil(radius)) + 3
    offsets = np.array(SUBPIXEL_OFFSETS, dtype=np.float64)  # [Q, 2]
    centres = side / 2.0 + offsets
    masks = shape_mask(shape, radius, centres, side, side)  # [Q, S, S]
    return torch.from_numpy(masks.astype(np.float32))[:, None]


def _could_be_hidden(own: np.ndarray, cover: np.ndarray, shape: str, radius: float) -> np.ndarray:
    """Per frame, whether some placement of the template lies within ``cover`` and contains the
    object's own pixels, both up to ``HIDDEN_SLACK`` of its area: the object may be there, partly
    or wholly hidden by the objects in front of it.

    ``own`` (bool [t, H, W]) is the object's pixels, ``cover`` its own plus those of every object
    in front of it.
    """
    kernel = _kernel(shape, radius)  # [Q, 1, S, S]
    area = kernel.sum(dim=(1, 2, 3))[None, :, None, None]  # [1, Q, 1, 1]
    result = np.zeros(len(own), dtype=bool)
    # Necessary condition, cheap: enough covering pixels for a template at all (skips vanished objects).
    candidates = np.flatnonzero(cover.sum(axis=(1, 2)) >= (1.0 - HIDDEN_SLACK) * float(area.min()))
    if len(candidates) == 0:
        return result
    maps = torch.from_numpy(np.stack([own[candidates], cover[candidates]], axis=1).astype(np.float32))
    t, _, h, w = maps.shape  # [t, 2, H, W]
    with torch.no_grad():
        inside = torch.nn.functional.conv2d(
            maps.reshape(2 * t, 1, h, w), kernel, padding=kernel.shape[-1] // 2
        ).reshape(t, 2, -1, h, w)  # [t, {own, cover}, Q, H, W]: pixels of each map under the template
    own_total = maps[:, 0].sum(dim=(1, 2))[:, None, None, None]  # [t, 1, 1, 1]
    own_outside = (own_total - inside[:, 0]) / area  # own pixels the placement does not explain
    uncovered = (area - inside[:, 1]) / area  # template pixels neither own nor occluded
    fits = (own_outside <= HIDDEN_SLACK) & (uncovered <= HIDDEN_SLACK)  # [t, Q, H, W]
    result[candidates] = fits.flatten(1).any(dim=1).numpy()
    return result


def _mixes_with_background(offset: np.ndarray, towards: np.ndarray, tol: float) -> np.ndarray:
    """Which pixels are (mostly) a palette colour, allowing soft edges: bool [t, P, H, W].

    A pixel x over background b shows colour c when it lies within ``tol`` of the segment b -> c
    at a mixing weight of at least ``MIX_THRESHOLD`` towards c. A blurred or anti-aliased edge is
    such a mixture, so thresholding it at half-way puts the edge where the sharp shape has it;
    a colour that is no mixture of background and c (another hue) stays unexplained.
    ``offset`` is x - b, float64 [t, H, W, 3]; ``towards`` is c - b, float64 [P, H, W, 3].
    """
    length2 = np.square(towards).sum(axis=-1)  # [P, H, W]
    offset2 = np.square(offset).sum(axis=-1)  # [t, H, W]
    out = np.empty((len(offset),) + length2.shape, dtype=bool)
    for c in range(len(towards)):
        along = (offset * towards[c]).sum(axis=-1)  # [t, H, W]
        weight = np.clip(along / length2[c], 0.0, 1.0)
        residual2 = offset2 - 2.0 * weight * along + weight * weight * length2[c]
        out[:, c] = (weight >= MIX_THRESHOLD) & (residual2 <= tol * tol)
    return out


def _palette_distance(f: np.ndarray) -> np.ndarray:
    """RGB distance of every pixel of float64 [t, H, W, 3] to every palette colour: [t, P, H, W].

    Expanded as |f|^2 - 2 f.c + |c|^2 so the work is one small matmul; all terms are integers
    below 2^53 in float64, so the squared distances are exact (a palette pixel is exactly 0).
    """
    cross = f @ _PALETTE_RGB.T  # [t, H, W, P]
    squared = np.square(f).sum(axis=-1)[..., None] - 2.0 * cross + np.square(_PALETTE_RGB).sum(axis=-1)
    return np.sqrt(np.maximum(squared, 0.0)).transpose(0, 3, 1, 2)


@dataclass(frozen=True, eq=False)
class _FrameScores:
    """Per-frame results before segment pooling: float [T] and bool / float [T, N(, 2)] arrays."""

    off_world: np.ndarray
    colour_error: np.ndarray
    spurious: np.ndarray
    background_sum: np.ndarray
    background_count: np.ndarray
    active: np.ndarray
    present: np.ndarray
    shape_ok: np.ndarray
    size_ok: np.ndarray
    matched: np.ndarray
    hidden: np.ndarray
    centroid: np.ndarray


def _score_frames(frames: np.ndarray, timeline: Timeline, config: TruthConfig) -> _FrameScores:
    """Assign every pixel (module docstring) and score every object on every frame."""
    n_frames, n_obj = len(frames), len(timeline.final.objects)
    spec_index = timeline.index_per_frame(n_frames)  # [T]
    tol = config.colour_tolerance
    per_frame = {name: np.zeros(n_frames) for name in ("off_world", "colour_error", "spurious")}
    bg_sum, bg_count = np.zeros(n_frames), np.zeros(n_frames)
    flags = {
        name: np.zeros((n_frames, n_obj), dtype=bool)
        for name in ("active", "present", "shape_ok", "size_ok", "matched", "hidden")
    }
    centroid = np.full((n_frames, n_obj, 2), np.nan)

    for s, spec in enumerate(timeline.specs):
        in_spec = np.flatnonzero(spec_index == s)
        background = background_image(spec).astype(np.float64)  # [H, W, 3]
        towards = _PALETTE_RGB[:, None, None, :] - background[None]  # [P, H, W, 3]: bg -> colour
        own = np.array([_PALETTE.index(o.colour) for o in spec.objects])  # palette index per object
        allowed = np.zeros(len(_PALETTE), dtype=bool)
        allowed[own] = True
        flags["active"][in_spec, : len(spec.objects)] = True
        for lo in range(0, len(in_spec), EVAL_CHUNK_FRAMES):
            idx = in_spec[lo : lo + EVAL_CHUNK_FRAMES]
            f = frames[idx].astype(np.float64)  # [t, H, W, 3]
            d_bg = np.sqrt(np.square(f - background[None]).sum(axis=-1))  # [t, H, W]
            d_pal = _palette_distance(f)  # [t, P, H, W]
            d_valid = np.minimum(d_bg, d_pal[:, allowed].min(axis=1))  # [t, H, W]
            explained = _mixes_with_background(f - background[None], towards, tol)  # [t, P, H, W]
            nearest = np.argmin(np.where(explained, d_pal, np.inf), axis=1)  # [t, H, W] palette index
            is_colour = explained.any(axis=1)  # pixel shows (mostly) palette colour `nearest`
            per_frame["off_world"][idx] = (d_valid > tol).mean(axis=(1, 2))
            per_frame["colour_error"][idx] = d_valid.mean(axis=(1, 2))
            per_frame["spurious"][idx] = (is_colour & ~allowed[nearest]).mean(axis=(1, 2))
            on_bg = d_bg <= d_valid  # the background is the nearest valid colour here
            bg_sum[idx] = np.where(on_bg, d_bg, 0.0).sum(axis=(1, 2))
            bg_count[idx] = on_bg.sum(axis=(1, 2))
            for k, p in enumerate(own):
                own_px = is_colour & (nearest == p)  # [t, H, W]
                present, shape_ok, size_ok, matched, centre = _object_frames(own_px, spec, k, config)
                flags["present"][idx, k] = present
                flags["shape_ok"][idx, k] = shape_ok
                flags["size_ok"][idx, k] = size_ok
                flags["matched"][idx, k] = matched
                centroid[idx, k] = centre
                missed = np.flatnonzero(~matched)
                if len(missed):
                    cover = is_colour[missed] & np.isin(nearest[missed], own[k:])  # own + in front
                    flags["hidden"][idx[missed], k] = _could_be_hidden(
                        own_px[missed], cover, spec.objects[k].shape, spec.radius(k)
                    )
    return _FrameScores(
        **per_frame, background_sum=bg_sum, background_count=bg_count, **flags, centroid=centroid
    )


def object_centroids(
    frames: np.ndarray | torch.Tensor, spec: WorldSpec, config: TruthConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Where each object is on each frame: centroids float [T, N, 2] (row, column; NaN where its colour
    is absent) and whether it is matched there, bool [T, N] (the centroid of a matched object is the
    centre of its whole template: a position the world can be held to)."""
    config = config or TruthConfig()
    timeline = Timeline.constant(spec)
    scores = _score_frames(_as_frames(frames, spec), timeline, config)
    return scores.centroid, scores.matched


def _fraction(hits: np.ndarray, among: np.ndarray) -> np.ndarray:
    """Per column of [t, N] bool arrays: hits / among, NaN where ``among`` is empty."""
    count = among.sum(axis=0)
    return np.where(count > 0, (hits & among).sum(axis=0) / np.maximum(count, 1), np.nan)


def evaluate(
    frames: np.ndarray | torch.Tensor, spec: WorldSpec | Timeline, config: TruthConfig | None = None
) -> TruthReport:
    """Score a video uint8 [T, H, W, 3] against the spec (or timeline of specs) it was prompted with."""
    config = config or TruthConfig()
    timeline = spec if isinstance(spec, Timeline) else Timeline.constant(spec)
    frames = _as_frames(frames, timeline.final)
    scores = _score_frames(frames, timeline, config)
    n_frames = len(frames)

    # Motion: centroid step t-1 -> t, only when the object is matched (whole) on both frames.
    nominal = np.array([timeline.specs[i].nominal_speed() for i in timeline.index_per_frame(n_frames)])
    step = np.full(scores.matched.shape, np.nan)  # [T, N]
    both = scores.matched[1:] & scores.matched[:-1]
    step[1:] = np.where(both, np.linalg.norm(np.diff(scores.centroid, axis=0), axis=-1), np.nan)
    has_step = ~np.isnan(step)
    still = has_step & (np.nan_to_num(step, nan=np.inf) < config.stagnant_px)

    judged = scores.active & (scores.matched | ~scores.hidden)  # seen well enough to match or refute
    starts = np.arange(0, n_frames, config.segment_frames)
    rows: dict[str, list[np.ndarray]] = {}
    for start in starts:
        seg = slice(start, start + config.segment_frames)
        exists = scores.active[seg].any(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            n_steps = has_step[seg].sum(axis=0)
            values = {
                "identity": _fraction(scores.matched[seg], judged[seg]),
                "hidden": _fraction(scores.hidden[seg], scores.active[seg]),
                "present": _fraction(scores.present[seg], judged[seg]),
                "shape_ok": _fraction(scores.shape_ok[seg], judged[seg] & scores.present[seg]),
                "size_ok": _fraction(scores.size_ok[seg], judged[seg] & scores.present[seg]),
                "displacement": np.where(n_steps > 0, np.nansum(step[seg], axis=0) / n_steps, np.nan),
                "stagnation": _fraction(still[seg], has_step[seg]),
                "speed_ratio": np.where(
                    n_steps > 0, np.nansum(step[seg] / nominal[seg, None], axis=0) / n_steps, np.nan
                ),
            }
        for name, value in values.items():
            rows.setdefault(name, []).append(np.where(exists, value, np.nan))

    def pooled(x: np.ndarray) -> np.ndarray:
        return np.array([x[s : s + config.segment_frames].mean() for s in starts])

    bg_sum = np.add.reduceat(scores.background_sum, starts)
    bg_count = np.add.reduceat(scores.background_count, starts)
    return TruthReport(
        segment_starts=starts,
        **{name: np.stack(values) for name, values in rows.items()},
        off_world=pooled(scores.off_world),
        colour_error=pooled(scores.colour_error),
        spurious=pooled(scores.spurious),
        background_error=bg_sum / np.maximum(bg_count, 1),
    )
