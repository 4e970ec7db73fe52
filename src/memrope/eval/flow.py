"""Dense optical flow with OpenCV DIS, and the warping helpers the motion metrics share.

DIS (Kroeger et al., ECCV 2016) needs no weights and runs in a few milliseconds on a 416x240 pair on
one core, so it can follow every sampled pair of an hour-long video. Convention: flow(a, b) is the
field F with a(x) ~= b(x + F(x)).
"""

from __future__ import annotations

import cv2
import numpy as np

# Forward-backward consistency test of Sundaram, Brox & Keutzer (ECCV 2010), as used for occlusion
# masks by Ruder et al. (2016): |F + B(x+F)|^2 < alpha (|F|^2 + |B(x+F)|^2) + beta.
FB_ALPHA = 0.01
FB_BETA = 0.5

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


class DisFlow:
    """Stateless-per-call wrapper around one cv2.DISOpticalFlow object (reused to avoid re-allocation)."""

    def __init__(self, preset: str = "fast") -> None:
        if preset not in DIS_PRESETS:
            raise ValueError(f"DIS preset {preset!r}: choose one of {sorted(DIS_PRESETS)}")
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])

    def __call__(self, a_gray: np.ndarray, b_gray: np.ndarray) -> np.ndarray:
        """Flow from a to b, HxWx2 float32 in pixels (x, y)."""
        if a_gray.ndim != 2 or a_gray.dtype != np.uint8 or a_gray.shape != b_gray.shape:
            raise ValueError("DIS flow needs two uint8 single-channel frames of the same size")
        return self._dis.calc(a_gray, b_gray, None)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return xs, ys


def warp(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample `image` at x + flow(x) (bilinear). Returns the warped image and a mask of in-frame samples."""
    h, w = flow.shape[:2]
    xs, ys = _grid(h, w)
    map_x = xs + flow[..., 0]
    map_y = ys + flow[..., 1]
    warped = cv2.remap(image, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    return warped, inside


def consistent_mask(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Pixels of frame a whose forward flow is undone by the backward flow (not occluded), in-frame only."""
    back_at_target, inside = warp(backward, forward)
    residual = _squared_length(forward + back_at_target)
    scale = _squared_length(forward) + _squared_length(back_at_target)
    return inside & (residual < FB_ALPHA * scale + FB_BETA)


def _squared_length(flow: np.ndarray) -> np.ndarray:
    # explicit over the 2 components: numpy's reduction over a length-2 last axis is ~10x slower
    return flow[..., 0] ** 2 + flow[..., 1] ** 2


def magnitude(flow: np.ndarray) -> np.ndarray:
    """Per-pixel flow length in pixels."""
    return np.sqrt(_squared_length(flow))
