"""Pieces RAFT and AMT share: the residual feature encoders, coordinate grids, bilinear lookup in
pixel coordinates, and the all-pairs correlation pyramid with its windowed lookup.

Facts from princeton-vl/RAFT as copied into Vchitect/VBench@45e79ec1
(``vbench/third_party/RAFT/core/extractor.py``, ``corr.py``, ``utils_core/utils.py``) and MCG-NKU/AMT as
copied there (``vbench/third_party/amt/networks/blocks/feat_enc.py``, ``raft.py``). Module and
parameter names are the upstream ones, so that the original checkpoints load key for key.

One quirk is kept on purpose: the lookup window is ``stack(meshgrid(dy, dx))`` added to ``(x, y)``
coordinates, so the window's first axis moves along x. The trained update blocks read the 81 (or 49)
correlation channels in that order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "instance", "group", "none")
# RAFT and AMT build GroupNorm with one group per 8 channels (extractor.py: num_groups = planes // 8).
CHANNELS_PER_GROUP = 8
STEM_CHANNELS_BASIC = 64
STEM_CHANNELS_SMALL = 32
STEM_GROUPS = 8


def norm_layer(kind: str, channels: int, groups: int | None = None) -> nn.Module:
    """The upstream `norm_fn` choices; 'instance' has no parameters (affine=False, no running stats)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(groups or channels // CHANNELS_PER_GROUP, channels)
    if kind == "none":
        return nn.Sequential()
    raise ValueError(f"norm {kind!r}: use one of {NORMS}")


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a (strided 1x1) shortcut; RAFT's BasicEncoder block."""

    def __init__(self, in_planes: int, planes: int, norm: str, stride: int = 1) -> None:
        super().__init__()
        groups = planes // CHANNELS_PER_GROUP
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.norm1 = norm_layer(norm, planes, groups)
        self.norm2 = norm_layer(norm, planes, groups)
        self.downsample = None
        if stride != 1:
            self.norm3 = norm_layer(norm, planes, groups)
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), self.norm3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 at a quarter of the width; the SmallEncoder block."""

    def __init__(self, in_planes: int, planes: int, norm: str, stride: int = 1) -> None:
        super().__init__()
        groups = planes // CHANNELS_PER_GROUP
        quarter = planes // 4
        self.conv1 = nn.Conv2d(in_planes, quarter, kernel_size=1, padding=0)
        self.conv2 = nn.Conv2d(quarter, quarter, kernel_size=3, padding=1, stride=stride)
        self.conv3 = nn.Conv2d(quarter, planes, kernel_size=1, padding=0)
        self.relu = nn.ReLU(inplace=True)
        self.norm1 = norm_layer(norm, quarter, groups)
        self.norm2 = norm_layer(norm, quarter, groups)
        self.norm3 = norm_layer(norm, planes, groups)
        self.downsample = None
        if stride != 1:
            self.norm4 = norm_layer(norm, planes, groups)
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), self.norm4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        y = self.relu(self.norm3(self.conv3(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class FeatureEncoder(nn.Module):
    """7x7/2 stem, three stages of two blocks (strides 1, 2, 2), 1x1 output: 1/8 resolution.

    `stages` are the stage widths: RAFT's BasicEncoder (64, 96, 128) with ResidualBlocks, the
    SmallEncoder (32, 64, 96) with BottleneckBlocks. A list input is run as one batch and split back,
    as upstream does for the two frames of a pair.
    """

    def __init__(self, output_dim: int, norm: str, stages: tuple[int, int, int], bottleneck: bool) -> None:
        super().__init__()
        stem = STEM_CHANNELS_SMALL if bottleneck else STEM_CHANNELS_BASIC
        block = BottleneckBlock if bottleneck else ResidualBlock
        self.norm1 = norm_layer(norm, stem, STEM_GROUPS)
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3)
        self.relu1 = nn.ReLU(inplace=True)
        width = stem
        for i, (dim, stride) in enumerate(zip(stages, (1, 2, 2)), start=1):
            setattr(self, f"layer{i}", nn.Sequential(block(width, dim, norm, stride), block(dim, dim, norm, 1)))
            width = dim
        self.conv2 = nn.Conv2d(width, output_dim, kernel_size=1)

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | tuple[torch.Tensor, ...]:
        pair = isinstance(x, (list, tuple))
        if pair:
            batch = x[0].shape[0]
            x = torch.cat(list(x), dim=0)
        x = self.relu1(self.norm1(self.conv1(x)))
        x = self.conv2(self.layer3(self.layer2(self.layer1(x))))
        return torch.split(x, [batch, batch], dim=0) if pair else x


def coords_grid(batch: int, height: int, width: int, device=None) -> torch.Tensor:
    """(batch, 2, H, W) pixel coordinates, channel 0 = x (column), channel 1 = y (row)."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return torch.stack((xs, ys), dim=0).float()[None].repeat(batch, 1, 1, 1)


def bilinear_sampler(img: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """grid_sample at pixel coordinates (..., 2) = (x, y), align_corners=True, zeros outside."""
    height, width = img.shape[-2:]
    x, y = coords.split([1, 1], dim=-1)
    grid = torch.cat([2 * x / (width - 1) - 1, 2 * y / (height - 1) - 1], dim=-1)
    return F.grid_sample(img, grid, align_corners=True)


def all_pairs_correlation(fmap1: torch.Tensor, fmap2: torch.Tensor) -> torch.Tensor:
    """<f1(p), f2(q)> / sqrt(C) for every pair of positions: (B * H * W, 1, H, W), p-major."""
    batch, dim, height, width = fmap1.shape
    corr = torch.matmul(fmap1.view(batch, dim, height * width).transpose(1, 2), fmap2.view(batch, dim, height * width))
    return corr.view(batch * height * width, 1, height, width) / math.sqrt(dim)


def correlation_pyramid(corr: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Level 0 is the full volume; each next level averages 2x2 target positions (avg_pool2d)."""
    pyramid = [corr]
    for _ in range(levels - 1):
        corr = F.avg_pool2d(corr, 2, stride=2)
        pyramid.append(corr)
    return pyramid


def lookup_window(radius: int, device=None) -> torch.Tensor:
    """(1, 2r+1, 2r+1, 2) offsets; [i, j] = (i - r, j - r), the first offset added to x (upstream order)."""
    d = torch.linspace(-radius, radius, 2 * radius + 1, device=device)
    return torch.stack(torch.meshgrid(d, d, indexing="ij"), dim=-1).view(1, 2 * radius + 1, 2 * radius + 1, 2)


def pyramid_lookup(pyramid: list[torch.Tensor], coords: torch.Tensor, radius: int) -> torch.Tensor:
    """Sample every level in a (2r+1)^2 window around coords / 2^level: (B, levels * (2r+1)^2, H, W)."""
    coords = coords.permute(0, 2, 3, 1)  # (B, H, W, 2)
    batch, height, width, _ = coords.shape
    window = lookup_window(radius, coords.device)
    out = []
    for level, corr in enumerate(pyramid):
        centre = coords.reshape(batch * height * width, 1, 1, 2) / 2**level
        sampled = bilinear_sampler(corr, centre + window)  # (B*H*W, 1, 2r+1, 2r+1)
        out.append(sampled.view(batch, height, width, -1))
    return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous().float()


def pad_to_multiple(x: torch.Tensor, divisor: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Replicate-pad H and W up to multiples of `divisor`, split evenly (upstream InputPadder, 'sintel')."""
    height, width = x.shape[-2:]
    pad_h = (((height // divisor) + 1) * divisor - height) % divisor
    pad_w = (((width // divisor) + 1) * divisor - width) % divisor
    pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
    return (F.pad(x, pad, mode="replicate") if any(pad) else x), pad


def unpad(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    left, right, top, bottom = pad
    height, width = x.shape[-2:]
    return x[..., top : height - bottom, left : width - right]
