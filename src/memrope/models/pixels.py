"""Decoded pixels in [-1, 1] -> uint8: the one quantisation rule every decoder applies.

The reference pipelines truncate: Wan's ``cache_video`` (Wan-Video/Wan2.1@9737cba ``wan/utils/utils.py``:
``make_grid(normalize=True, value_range=(-1, 1))`` then ``(x * 255).type(torch.uint8)``), and Self-Forcing's
and the MemRoPE reference's ``inference.py`` (guandeh17/Self-Forcing@33593df,
YoungRaeKimm/MemRoPE@b89bf5b: ``(x * 0.5 + 0.5).clamp(0, 1)``, ``255.0 * x``, then torchvision's
``write_video``, which casts to uint8). So ``truncate`` is the default: ``uint8(255 * ((x + 1) / 2))`` after
clamping, bit for bit the reference's frames. ``round`` (``round(255 * (x + 1) / 2)``, half to even, as
diffusers' video post-processing does) is a little more faithful to the decoder's values: on average
truncation darkens by half a level, and about half of all values differ between the two by one level.
"""

from __future__ import annotations

import torch

PIXEL_MODES = ("truncate", "round")
DEFAULT_PIXELS = "truncate"
PIXEL_MIN, PIXEL_MAX = -1.0, 1.0  # the decoders' output range (Wan decodes to [-1, 1])
UINT8_MAX = 255.0


def check_pixels(mode: str) -> str:
    if mode not in PIXEL_MODES:
        raise ValueError(f"pixel quantisation must be one of {', '.join(PIXEL_MODES)}, got {mode!r}")
    return mode


def quantise(pixels: torch.Tensor, mode: str = DEFAULT_PIXELS) -> torch.Tensor:
    """Floats in [-1, 1] (clamped first) -> uint8 of the same shape, by ``mode`` (see the module)."""
    check_pixels(mode)
    unit = (pixels.float().clamp(PIXEL_MIN, PIXEL_MAX) - PIXEL_MIN) / (PIXEL_MAX - PIXEL_MIN)  # (x + 1) / 2
    levels = unit * UINT8_MAX
    if mode == "round":
        levels = levels.round_()
    return levels.to(torch.uint8)  # float -> uint8 truncates towards zero (values are >= 0 here)
