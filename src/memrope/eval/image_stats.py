"""Per-frame image statistics: sharpness, exposure and colour.

Cheap, weight-free signals of fidelity loss over long rollouts: generated videos that drift typically
blur (sharpness falls), wash out or darken (exposure), and shift or lose colour (saturation, mean
colour). They are statistics, not quality scores: only their change over time is meaningful.
"""

from __future__ import annotations

import cv2
import numpy as np

from memrope.eval.flicker import PIXEL_MAX
from memrope.eval.spec import MetricSpec

# Luma at or below / at or above these 8-bit levels counts as crushed / clipped (about 1% of range).
CLIP_DARK_LEVEL = 2
CLIP_BRIGHT_LEVEL = 253
# Hasler & Suesstrunk (2003), "Measuring colourfulness in natural images": sigma_rgyb + 0.3 mu_rgyb.
COLOURFULNESS_MEAN_WEIGHT = 0.3

SHARPNESS = MetricSpec(
    name="sharpness",
    implementation="var(Laplacian(grey uint8, ksize=1)) at source resolution",
    unit="grey levels^2",
    description="Edge energy; falls when frames blur as quality degrades.",
    higher_is_better=True,
)
BRIGHTNESS = MetricSpec(
    name="brightness",
    implementation="mean luma (BT.601)/255",
    unit="[0, 1]",
    description="Exposure level; slow drift means washing out or darkening.",
)
CONTRAST = MetricSpec(
    name="contrast",
    implementation="std luma (BT.601)/255",
    unit="[0, 1]",
    description="Global contrast; collapses when frames turn flat or grey.",
)
CLIPPED_FRACTION = MetricSpec(
    name="clipped_fraction",
    implementation=f"fraction luma<={CLIP_DARK_LEVEL} or >={CLIP_BRIGHT_LEVEL}",
    unit="fraction",
    description="Crushed shadows plus blown highlights.",
    higher_is_better=False,
)
SATURATION = MetricSpec(
    name="saturation",
    implementation="mean HSV saturation/255 (OpenCV)",
    unit="[0, 1]",
    description="Colour intensity; generated videos often desaturate or over-saturate as they drift.",
)
COLOURFULNESS = MetricSpec(
    name="colourfulness",
    implementation="Hasler-Suesstrunk 2003 on 0..255 RGB",
    unit="0..~150",
    description="Perceptual colourfulness of the frame.",
)
MEAN_RED = MetricSpec(
    name="mean_red",
    implementation="mean R/255",
    unit="[0, 1]",
    description="Mean red channel: colour cast drift.",
)
MEAN_GREEN = MetricSpec(
    name="mean_green",
    implementation="mean G/255",
    unit="[0, 1]",
    description="Mean green channel: colour cast drift.",
)
MEAN_BLUE = MetricSpec(
    name="mean_blue",
    implementation="mean B/255",
    unit="[0, 1]",
    description="Mean blue channel: colour cast drift.",
)

IMAGE_STAT_SPECS = (
    SHARPNESS,
    BRIGHTNESS,
    CONTRAST,
    CLIPPED_FRACTION,
    SATURATION,
    COLOURFULNESS,
    MEAN_RED,
    MEAN_GREEN,
    MEAN_BLUE,
)


def sharpness(gray: np.ndarray) -> float:
    """Variance of the Laplacian (Pech-Pacheco et al. 2000): the classic focus measure."""
    _, std = cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_64F, ksize=1))
    return float(std[0, 0] ** 2)


def colour_stats(rgb: np.ndarray, gray: np.ndarray) -> dict[str, float]:
    """Exposure and colour statistics of one RGB uint8 frame (and its grey version)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB frame, got {rgb.shape} {rgb.dtype}")
    luma_mean, luma_std = (float(x[0, 0]) for x in cv2.meanStdDev(gray))
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    rg = r - g
    yb = 0.5 * (r + g) - b
    colourfulness = float(
        np.hypot(rg.std(), yb.std()) + COLOURFULNESS_MEAN_WEIGHT * np.hypot(rg.mean(), yb.mean())
    )
    means = np.asarray(cv2.mean(rgb)[:3]) / PIXEL_MAX
    return {
        BRIGHTNESS.name: luma_mean / PIXEL_MAX,
        CONTRAST.name: luma_std / PIXEL_MAX,
        CLIPPED_FRACTION.name: float(((gray <= CLIP_DARK_LEVEL) | (gray >= CLIP_BRIGHT_LEVEL)).mean()),
        SATURATION.name: float(cv2.mean(hsv)[1] / PIXEL_MAX),
        COLOURFULNESS.name: colourfulness,
        MEAN_RED.name: float(means[0]),
        MEAN_GREEN.name: float(means[1]),
        MEAN_BLUE.name: float(means[2]),
    }
