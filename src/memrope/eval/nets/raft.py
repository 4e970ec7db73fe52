"""RAFT (Teed & Deng, ECCV 2020), the full model VBench's dynamic degree runs (`raft-things.pth`).

Follows princeton-vl/RAFT as copied into Vchitect/VBench@45e79ec1 ``vbench/third_party/RAFT/core/raft.py``
(with ``update.py``, ``extractor.py``, ``corr.py``): feature encoder (instance norm, 256 channels) and
context encoder (batch norm, 128 hidden + 128 context) at 1/8 resolution, a 4-level all-pairs
correlation pyramid read in a radius-4 window, a separable ConvGRU update block, and convex
upsampling of the 1/8 flow with a learned 9-neighbour mask. VBench calls it with ``iters=20,
test_mode=True`` on replicate-padded frames in 0..255 and keeps the upsampled flow of the last
iteration.

Deviations: only the "basic" model is built (VBench uses ``small=False``); no mixed precision,
dropout or CUDA alternate correlation (VBench sets them off); ``args`` becomes `RaftConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from memrope.eval.nets.flow_common import (
    FeatureEncoder,
    all_pairs_correlation,
    coords_grid,
    correlation_pyramid,
    pad_to_multiple,
    pyramid_lookup,
)
from memrope.eval.nets.loading import load_checked, read_checkpoint, strip_prefix, tensors_under

# raft.py: the basic model's sizes; the network works at 1/8 of the input resolution.
DOWNSAMPLE = 8
PIXEL_MAX = 255.0
# dynamic_degree.py: RAFT(...)(image1, image2, iters=20, test_mode=True)
VBENCH_ITERS = 20
# update.py: the upsampling mask is scaled by .25 "to balance gradients"
MASK_SCALE = 0.25
NEIGHBOURS = 9  # a 3x3 neighbourhood per coarse pixel in convex upsampling


@dataclass(frozen=True)
class RaftConfig:
    """RAFT's basic model: hidden/context widths, correlation levels and radius, feature width."""

    hidden_dim: int = 128
    context_dim: int = 128
    corr_levels: int = 4
    corr_radius: int = 4
    feature_dim: int = 256
    encoder_stages: tuple[int, int, int] = (64, 96, 128)
    motion_corr: tuple[int, int] = (256, 192)
    motion_flow: tuple[int, int] = (128, 64)
    motion_out: int = 128
    flow_head_hidden: int = 256
    mask_hidden: int = 256

    def __post_init__(self) -> None:
        if self.motion_out <= 2:
            raise ValueError(f"motion_out={self.motion_out}: must exceed the 2 flow channels it is concatenated with")

    @property
    def corr_channels(self) -> int:
        return self.corr_levels * (2 * self.corr_radius + 1) ** 2


class FlowHead(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_dim, hidden_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden_dim, 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x)))


class SepConvGRU(nn.Module):
    """A GRU with 1x5 then 5x1 convolutions (horizontal pass, then vertical)."""

    def __init__(self, hidden_dim: int, input_dim: int) -> None:
        super().__init__()
        both = hidden_dim + input_dim
        for axis, kernel, pad in (("1", (1, 5), (0, 2)), ("2", (5, 1), (2, 0))):
            for gate in "zrq":
                setattr(self, f"conv{gate}{axis}", nn.Conv2d(both, hidden_dim, kernel, padding=pad))

    def _step(self, h: torch.Tensor, x: torch.Tensor, axis: str) -> torch.Tensor:
        hx = torch.cat([h, x], dim=1)
        z = torch.sigmoid(getattr(self, f"convz{axis}")(hx))
        r = torch.sigmoid(getattr(self, f"convr{axis}")(hx))
        q = torch.tanh(getattr(self, f"convq{axis}")(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._step(self._step(h, x, "1"), x, "2")


class BasicMotionEncoder(nn.Module):
    def __init__(self, cfg: RaftConfig) -> None:
        super().__init__()
        self.convc1 = nn.Conv2d(cfg.corr_channels, cfg.motion_corr[0], 1, padding=0)
        self.convc2 = nn.Conv2d(cfg.motion_corr[0], cfg.motion_corr[1], 3, padding=1)
        self.convf1 = nn.Conv2d(2, cfg.motion_flow[0], 7, padding=3)
        self.convf2 = nn.Conv2d(cfg.motion_flow[0], cfg.motion_flow[1], 3, padding=1)
        self.conv = nn.Conv2d(cfg.motion_flow[1] + cfg.motion_corr[1], cfg.motion_out - 2, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        cor = F.relu(self.convc2(F.relu(self.convc1(corr))))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        return torch.cat([F.relu(self.conv(torch.cat([cor, flo], dim=1))), flow], dim=1)


class BasicUpdateBlock(nn.Module):
    def __init__(self, cfg: RaftConfig) -> None:
        super().__init__()
        self.encoder = BasicMotionEncoder(cfg)
        self.gru = SepConvGRU(cfg.hidden_dim, cfg.context_dim + cfg.motion_out)
        self.flow_head = FlowHead(cfg.hidden_dim, cfg.flow_head_hidden)
        self.mask = nn.Sequential(
            nn.Conv2d(cfg.hidden_dim, cfg.mask_hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(cfg.mask_hidden, DOWNSAMPLE * DOWNSAMPLE * NEIGHBOURS, 1, padding=0),
        )

    def forward(self, net, inp, corr, flow):
        inp = torch.cat([inp, self.encoder(flow, corr)], dim=1)
        net = self.gru(net, inp)
        return net, MASK_SCALE * self.mask(net), self.flow_head(net)


def convex_upsample(flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) flow -> (B, 2, 8H, 8W): each fine pixel is a softmax-weighted mix of the 3x3 coarse
    neighbours of its coarse pixel, times 8 (flow is in pixels of the resolution it lives at)."""
    batch, _, height, width = flow.shape
    mask = torch.softmax(mask.view(batch, 1, NEIGHBOURS, DOWNSAMPLE, DOWNSAMPLE, height, width), dim=2)
    up = F.unfold(DOWNSAMPLE * flow, [3, 3], padding=1).view(batch, 2, NEIGHBOURS, 1, 1, height, width)
    up = torch.sum(mask * up, dim=2)  # (B, 2, 8, 8, H, W): sub-pixel row, column, coarse row, column
    return up.permute(0, 1, 4, 2, 5, 3).reshape(batch, 2, DOWNSAMPLE * height, DOWNSAMPLE * width)


class RAFT(nn.Module):
    """Module names are raft.py's: fnet, cnet, update_block (keys load as the checkpoint stores them)."""

    def __init__(self, cfg: RaftConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or RaftConfig()
        self.fnet = FeatureEncoder(cfg.feature_dim, "instance", cfg.encoder_stages, bottleneck=False)
        self.cnet = FeatureEncoder(cfg.hidden_dim + cfg.context_dim, "batch", cfg.encoder_stages, bottleneck=False)
        self.update_block = BasicUpdateBlock(cfg)

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, iters: int = VBENCH_ITERS) -> torch.Tensor:
        """Flow from image1 to image2, (B, 2, H, W) at full resolution; images (B, 3, H, W) in 0..255
        with H and W multiples of 8 (pad with `pad_for_raft`)."""
        image1 = 2 * (image1 / PIXEL_MAX) - 1.0
        image2 = 2 * (image2 / PIXEL_MAX) - 1.0
        fmap1, fmap2 = self.fnet([image1, image2])
        pyramid = correlation_pyramid(all_pairs_correlation(fmap1.float(), fmap2.float()), self.cfg.corr_levels)
        net, inp = torch.split(self.cnet(image1), [self.cfg.hidden_dim, self.cfg.context_dim], dim=1)
        net, inp = torch.tanh(net), torch.relu(inp)
        batch, _, height, width = image1.shape
        coords0 = coords_grid(batch, height // DOWNSAMPLE, width // DOWNSAMPLE, image1.device)
        coords1 = coords0.clone()
        for _ in range(iters):
            corr = pyramid_lookup(pyramid, coords1, self.cfg.corr_radius)
            net, mask, delta = self.update_block(net, inp, corr, coords1 - coords0)
            coords1 = coords1 + delta
        return convex_upsample(coords1 - coords0, mask)


def pad_for_raft(*images: torch.Tensor) -> list[torch.Tensor]:
    """VBench's InputPadder(shape) ('sintel' mode): replicate-pad to multiples of 8, split evenly."""
    return [pad_to_multiple(x, DOWNSAMPLE)[0] for x in images]


def load_raft(path: Path) -> RAFT:
    """`raft-things.pth` (a state dict saved from DataParallel: keys under ``module.``), validated first."""
    sd = strip_prefix(tensors_under(read_checkpoint(path), path), "module.")
    return load_checked(RAFT, sd, Path(path), "RAFT")
