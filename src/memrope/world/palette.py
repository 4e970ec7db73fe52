"""The toy world's colours: a small palette chosen so that colour alone identifies every pixel.

Metrics on the toy world are exact because every pixel of a valid rendering is either the
background colour at that pixel or one of a few known, well separated object colours. Two rules
make that hold and are checked by the tests:

- object colours are bright and saturated, background colours dark or muted, so the nearest
  palette colour of a pixel is unambiguous: every pair of object colours, and every object colour
  and every background shade (gradient shades included), are further apart than
  ``2 * COLOUR_TOLERANCE``;
- object and background colours have disjoint names, so a colour word in a prompt says by itself
  whether it describes an object or the background.

Colours are RGB uint8 triples. Distances are Euclidean in RGB, in uint8 units.
"""

from __future__ import annotations

import numpy as np

OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 230, 30),
    "cyan": (40, 220, 230),
    "magenta": (230, 50, 210),
    "orange": (250, 130, 0),
    "white": (245, 245, 245),
}
"""Object colours by prompt word. Closest pair (red, orange) is 100 apart."""

BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (12, 12, 16),
    "navy": (16, 20, 72),
    "maroon": (72, 16, 24),
    "forest": (16, 60, 28),
    "grey": (88, 88, 96),
}
"""Background base colours by prompt word (the top of a gradient, the light cells of a checker)."""

BACKGROUND_PARTNERS: dict[str, tuple[int, int, int]] = {
    "black": (52, 52, 60),
    "navy": (4, 6, 24),
    "maroon": (24, 6, 8),
    "forest": (4, 20, 8),
    "grey": (40, 40, 44),
}
"""Second colour of each background (bottom of a gradient, other checker cells).

A fixed partner per base colour keeps the vocabulary small ("a navy gradient") while giving the
background a texture that a model can blur or drift away from. Every shade between a base and its
partner stays more than ``2 * COLOUR_TOLERANCE`` from every object colour (the closest pair,
grey and green, is ~127 apart).
"""

COLOUR_TOLERANCE = 40.0
"""Largest RGB distance at which a pixel still counts as showing a palette colour.

Half of the closest object pair's distance (100) minus a margin, so no pixel can be within
tolerance of two object colours; generous enough that mild generation noise (per-channel standard
deviation ~10, i.e. ~17 in RGB distance) is not counted as an error.
"""


def object_rgb(name: str) -> np.ndarray:
    """RGB of an object colour word as float64 [3]; ValueError lists the valid words."""
    if name not in OBJECT_COLOURS:
        raise ValueError(f"unknown object colour {name!r}; choose one of {sorted(OBJECT_COLOURS)}")
    return np.asarray(OBJECT_COLOURS[name], dtype=np.float64)


def background_rgb(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(base, partner) RGB of a background colour word as float64 [3] each."""
    if name not in BACKGROUND_COLOURS:
        raise ValueError(f"unknown background colour {name!r}; choose one of {sorted(BACKGROUND_COLOURS)}")
    base = np.asarray(BACKGROUND_COLOURS[name], dtype=np.float64)
    partner = np.asarray(BACKGROUND_PARTNERS[name], dtype=np.float64)
    return base, partner
