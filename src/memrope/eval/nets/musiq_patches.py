"""MUSIQ's input: a multi-scale set of 32x32 patches with hashed spatial positions and scale ids.

Follows chaofengc/IQA-PyTorch@01ae427f ``pyiqa/data/multiscale_trans_util.py`` (a port of
google-research ``musiq/model/preprocessing.py``), as pyiqa's MUSIQ runs it in eval mode:
- for each longer-side length (224 and 384, sorted), resize the image keeping its aspect ratio
  (bicubic, no antialias; sides rounded), cut it into non-overlapping patches after TensorFlow 'SAME'
  zero padding, and pad (mask 0) or cut the sequence to ceil(L / 32)^2 patches;
- then every patch of the image at its own resolution (``max_seq_len_from_original_res=-1``: all of
  them, no padding), scale id 2;
- each patch carries its hashed position: row and column indices are mapped onto a G x G grid
  (G = 10) by nearest-neighbour resampling of arange(G), i.e. floor(i * G / count), and the index is
  row * G + column.
The result is one tensor (n, seq, 3 * 32 * 32 + 3): patch pixels (channel-major, as F.unfold lays
them out), then spatial index, scale id and mask, exactly as pyiqa hands it to the network.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# musiq_arch.py defaults: patch_size=32, spatial_pos_grid_size=10, longer_side_lengths=[224, 384]
PATCH_SIZE = 32
HASH_GRID = 10
LONGER_SIDES = (224, 384)
ALL_PATCHES = -1  # max_seq_len_from_original_res=-1: the original resolution contributes every patch
EXTRA_CHANNELS = 3  # spatial index, scale id, mask


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) for one axis."""
    out = math.ceil(size / stride)
    pad = max(0, (out - 1) * stride + kernel - size)
    return pad // 2, pad - pad // 2


def extract_patches(x: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """(n, c, h, w) -> (n, c * patch * patch, count_h * count_w) after 'SAME' zero padding."""
    top, bottom = same_padding(x.shape[2], patch, stride)
    left, right = same_padding(x.shape[3], patch, stride)
    return F.unfold(F.pad(x, (left, right, top, bottom)), patch, stride=stride)


def hashed_positions(grid: int, count_h: int, count_w: int) -> torch.Tensor:
    """(1, count_h * count_w) hashed position index of each patch, row-major."""
    base = torch.arange(grid).float().reshape(1, 1, grid)
    cols = F.interpolate(base, count_w, mode="nearest").repeat(1, count_h, 1)  # (1, count_h, count_w)
    rows = F.interpolate(base, count_h, mode="nearest").transpose(1, 2).repeat(1, 1, count_w)
    return (rows * grid + cols).reshape(1, -1)


def resize_longer_side(x: torch.Tensor, longer: int) -> torch.Tensor:
    h, w = x.shape[2:]
    ratio = longer / max(h, w)
    return F.interpolate(x, (round(h * ratio), round(w * ratio)), mode="bicubic", align_corners=False)


def _patches_with_positions(x: torch.Tensor, patch: int, grid: int, scale_id: int, max_len: int) -> torch.Tensor:
    n, _, h, w = x.shape
    p = extract_patches(x, patch, patch)
    spatial = hashed_positions(grid, math.ceil(h / patch), math.ceil(w / patch)).unsqueeze(1).repeat(n, 1, 1)
    out = torch.cat([p, spatial.to(p), torch.full_like(spatial, scale_id).to(p), torch.ones_like(spatial).to(p)], 1)
    if max_len >= 0:  # zero patches with mask 0 fill the sequence up, longer sequences are cut
        out = torch.cat([out, out.new_zeros(n, out.shape[1], max_len)], dim=-1)[:, :, :max_len]
    return out


def multiscale_patches(
    x: torch.Tensor,
    patch: int = PATCH_SIZE,
    grid: int = HASH_GRID,
    longer_sides: tuple[int, ...] = LONGER_SIDES,
    original_max_len: int | None = ALL_PATCHES,
) -> torch.Tensor:
    """(n, 3, h, w) image in [-1, 1] -> (n, seq, 3 * patch^2 + 3) patches with positions, scales, masks."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    sides = sorted(longer_sides)
    outs = []
    for scale_id, longer in enumerate(sides):
        max_len = int(np.ceil(longer / patch) ** 2)
        outs.append(_patches_with_positions(resize_longer_side(x, longer), patch, grid, scale_id, max_len))
    if original_max_len is not None:
        outs.append(_patches_with_positions(x, patch, grid, len(sides), original_max_len))
    return torch.cat(outs, dim=-1).transpose(1, 2)
