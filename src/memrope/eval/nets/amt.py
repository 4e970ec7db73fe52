"""AMT-S (Li et al., CVPR 2023: All-Pairs Multi-Field Transforms), the frame interpolator VBench's
motion smoothness runs (`amt-s.pth`).

Follows MCG-NKU/AMT as copied into Vchitect/VBench@45e79ec1 ``vbench/third_party/amt/networks/AMT-S.py``
with its blocks (``blocks/raft.py``, ``blocks/ifrnet.py``, ``blocks/multi_flow.py``,
``blocks/feat_enc.py``, ``utils/flow_utils.py``) and the config ``cfgs/AMT-S.yaml`` (corr_radius 3,
corr_lvls 4, num_flows 3): a small instance-norm feature encoder feeds a bidirectional correlation
pyramid; an IFRNet-style pyramid (4 levels) decodes the flows from the middle frame to both inputs,
each level refined by a correlation lookup; the finest level predicts 3 flow pairs with masks and
residuals, whose warps are merged by `comb_block`. VBench calls it with ``embt = 0.5``,
``scale_factor = 1`` (its CPU setting, and what its VRAM rule gives for 832x480 on any GPU with more
than ~3 GB) and ``eval=True``.

Deviations: ``scale_factor`` other than 1 is not supported (VBench's CUDA branch can pick a smaller
one for large frames on small GPUs: `AmtS.forward` rejects it); the training outputs are not built.
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
    bilinear_sampler,
    coords_grid,
    correlation_pyramid,
    lookup_window,
)
from memrope.eval.nets.loading import load_checked, read_checkpoint, tensors_under

DOWNSAMPLE = 8
LEAKY_SLOPE = 0.1  # blocks/raft.py: LeakyReLU(negative_slope=0.1)


@dataclass(frozen=True)
class AmtConfig:
    """AMT-S.py's sizes (``Model(corr_radius=3, corr_lvls=4, num_flows=3)``)."""

    corr_radius: int = 3
    corr_levels: int = 4
    num_flows: int = 3
    channels: tuple[int, int, int, int] = (20, 32, 44, 56)
    skip_channels: int = 20
    feature_dim: int = 84
    encoder_stages: tuple[int, int, int] = (32, 64, 96)
    update_hidden: int = 76
    update_flow: int = 20
    update_corr: int = 64
    update_fc: int = 68

    @property
    def corr_channels(self) -> int:
        return self.corr_levels * (2 * self.corr_radius + 1) ** 2


def resize(x: torch.Tensor, scale_factor: float) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale_factor, mode="bilinear", align_corners=False)


def warp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp: output(p) = img(p + flow(p)), bilinear, border padding (flow_utils.warp)."""
    batch, _, height, width = flow.shape
    xx = torch.linspace(-1.0, 1.0, width, device=flow.device).view(1, 1, 1, width).expand(batch, -1, height, -1)
    yy = torch.linspace(-1.0, 1.0, height, device=flow.device).view(1, 1, height, 1).expand(batch, -1, -1, width)
    grid = torch.cat([xx, yy], 1).to(img)
    scaled = torch.cat([flow[:, 0:1] / ((width - 1.0) / 2.0), flow[:, 1:2] / ((height - 1.0) / 2.0)], 1)
    return F.grid_sample(img, (grid + scaled).permute(0, 2, 3, 1), mode="bilinear", padding_mode="border",
                         align_corners=True)


def convrelu(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, padding: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, padding, bias=True), nn.PReLU(out_ch))


class ResBlock(nn.Module):
    """IFRNet's residual block: the last `side` channels get their own convolutions in between."""

    def __init__(self, channels: int, side: int) -> None:
        super().__init__()
        self.side = side
        self.conv1 = convrelu(channels, channels)
        self.conv2 = convrelu(side, side)
        self.conv3 = convrelu(channels, channels)
        self.conv4 = convrelu(side, side)
        self.conv5 = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1, bias=True)
        self.prelu = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.conv3(torch.cat([out[:, : -self.side], self.conv2(out[:, -self.side :])], 1))
        out = self.conv5(torch.cat([out[:, : -self.side], self.conv4(out[:, -self.side :])], 1))
        return self.prelu(x + out)


class Encoder(nn.Module):
    """Four stride-2 levels (``pyramid1..4``) of two conv+PReLU each."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.levels = len(channels)
        prev = 3
        for idx, ch in enumerate(channels, 1):
            setattr(self, f"pyramid{idx}", nn.Sequential(convrelu(prev, ch, 3, 2, 1), convrelu(ch, ch, 3, 1, 1)))
            prev = ch

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for idx in range(1, self.levels + 1):
            x = getattr(self, f"pyramid{idx}")(x)
            out.append(x)
        return out


class InitDecoder(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, skip_ch: int) -> None:
        super().__init__()
        self.convblock = nn.Sequential(
            convrelu(in_ch * 2 + 1, in_ch * 2), ResBlock(in_ch * 2, skip_ch),
            nn.ConvTranspose2d(in_ch * 2, out_ch + 4, 4, 2, 1, bias=True),
        )

    def forward(self, f0, f1, embt):
        embt = embt.repeat(1, 1, *f0.shape[2:])
        out = self.convblock(torch.cat([f0, f1, embt], 1))
        flow0, flow1 = torch.chunk(out[:, :4], 2, 1)
        return flow0, flow1, out[:, 4:]


class IntermediateDecoder(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, skip_ch: int) -> None:
        super().__init__()
        self.convblock = nn.Sequential(
            convrelu(in_ch * 3 + 4, in_ch * 3), ResBlock(in_ch * 3, skip_ch),
            nn.ConvTranspose2d(in_ch * 3, out_ch + 4, 4, 2, 1, bias=True),
        )

    def forward(self, ft, f0, f1, flow0_in, flow1_in):
        out = self.convblock(torch.cat([ft, warp(f0, flow0_in), warp(f1, flow1_in), flow0_in, flow1_in], 1))
        flow0, flow1 = torch.chunk(out[:, :4], 2, 1)
        flow0 = flow0 + 2.0 * resize(flow0_in, 2.0)
        flow1 = flow1 + 2.0 * resize(flow1_in, 2.0)
        return flow0, flow1, out[:, 4:]


class MultiFlowDecoder(nn.Module):
    def __init__(self, in_ch: int, skip_ch: int, num_flows: int) -> None:
        super().__init__()
        self.num_flows = num_flows
        self.convblock = nn.Sequential(
            convrelu(in_ch * 3 + 4, in_ch * 3), ResBlock(in_ch * 3, skip_ch),
            nn.ConvTranspose2d(in_ch * 3, 8 * num_flows, 4, 2, 1, bias=True),
        )

    def forward(self, ft, f0, f1, flow0, flow1):
        n = self.num_flows
        out = self.convblock(torch.cat([ft, warp(f0, flow0), warp(f1, flow1), flow0, flow1], 1))
        delta0, delta1, mask, img_res = torch.split(out, [2 * n, 2 * n, n, 3 * n], 1)
        flow0 = delta0 + 2.0 * resize(flow0, 2.0).repeat(1, n, 1, 1)
        flow1 = delta1 + 2.0 * resize(flow1, 2.0).repeat(1, n, 1, 1)
        return flow0, flow1, torch.sigmoid(mask), img_res


class SmallUpdateBlock(nn.Module):
    """Correlation + flow -> residual feature and flow updates, at 1/8 resolution, rescaled by `scale`."""

    def __init__(self, cfg: AmtConfig, cdim: int, scale: int | None) -> None:
        super().__init__()
        self.scale = scale
        self.convc1 = nn.Conv2d(2 * cfg.corr_channels, cfg.update_corr, 1, padding=0)
        self.convf1 = nn.Conv2d(4, cfg.update_flow * 2, 7, padding=3)
        self.convf2 = nn.Conv2d(cfg.update_flow * 2, cfg.update_flow, 3, padding=1)
        self.conv = nn.Conv2d(cfg.update_corr + cfg.update_flow, cfg.update_fc, 3, padding=1)
        hidden = cfg.update_hidden

        def head(out_ch: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
                                 nn.Conv2d(hidden, out_ch, 3, padding=1))

        self.gru = nn.Sequential(nn.Conv2d(cfg.update_fc + 4 + cdim, hidden, 3, padding=1),
                                 nn.LeakyReLU(LEAKY_SLOPE, inplace=True), nn.Conv2d(hidden, hidden, 3, padding=1))
        self.feat_head = head(cdim)
        self.flow_head = head(4)
        self.lrelu = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)

    def forward(self, net, flow, corr):
        if self.scale is not None:
            net = resize(net, 1 / self.scale)
        cor = self.lrelu(self.convc1(corr))
        flo = self.lrelu(self.convf2(self.lrelu(self.convf1(flow))))
        inp = torch.cat([self.lrelu(self.conv(torch.cat([cor, flo], dim=1))), flow, net], dim=1)
        out = self.gru(inp)
        delta_net, delta_flow = self.feat_head(out), self.flow_head(out)
        if self.scale is not None:
            delta_net = resize(delta_net, self.scale)
            delta_flow = self.scale * resize(delta_flow, self.scale)
        return delta_net, delta_flow


class BidirCorrelation:
    """Correlation pyramids both ways (frame 0 -> 1 and its transpose), looked up at two coordinate sets."""

    def __init__(self, fmap0: torch.Tensor, fmap1: torch.Tensor, levels: int, radius: int) -> None:
        batch, _, height, width = fmap0.shape
        corr = all_pairs_correlation(fmap0, fmap1).view(batch, height, width, 1, height, width)
        corr_t = corr.permute(0, 4, 5, 3, 1, 2).reshape(batch * height * width, 1, height, width)
        self.radius = radius
        self.pyramid = correlation_pyramid(corr.reshape(batch * height * width, 1, height, width), levels)
        self.pyramid_t = correlation_pyramid(corr_t, levels)

    def __call__(self, coords0: torch.Tensor, coords1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        coords0, coords1 = coords0.permute(0, 2, 3, 1), coords1.permute(0, 2, 3, 1)
        batch, height, width, _ = coords0.shape
        window = lookup_window(self.radius, coords0.device)
        out, out_t = [], []
        for level, (corr, corr_t) in enumerate(zip(self.pyramid, self.pyramid_t)):
            c0 = coords0.reshape(batch * height * width, 1, 1, 2) / 2**level + window
            c1 = coords1.reshape(batch * height * width, 1, 1, 2) / 2**level + window
            out.append(bilinear_sampler(corr, c0).view(batch, height, width, -1))
            out_t.append(bilinear_sampler(corr_t, c1).view(batch, height, width, -1))
        return (torch.cat(out, -1).permute(0, 3, 1, 2).contiguous().float(),
                torch.cat(out_t, -1).permute(0, 3, 1, 2).contiguous().float())


def multi_flow_combine(comb_block, img0, img1, flow0, flow1, mask, img_res, mean):
    """Warp both inputs along each of the n flow pairs, blend by mask, add residual and mean; average
    the n candidates and add comb_block's correction (multi_flow.py)."""
    batch, channels, height, width = flow0.shape
    n = channels // 2
    flow0 = flow0.reshape(batch * n, 2, height, width)
    flow1 = flow1.reshape(batch * n, 2, height, width)
    mask = mask.reshape(batch * n, 1, height, width)
    img_res = img_res.reshape(batch * n, 3, height, width)
    img0 = torch.stack([img0] * n, 1).reshape(-1, 3, height, width)
    img1 = torch.stack([img1] * n, 1).reshape(-1, 3, height, width)
    mean = torch.stack([mean] * n, 1).reshape(-1, 1, 1, 1)
    warps = mask * warp(img0, flow0) + (1 - mask) * warp(img1, flow1) + mean + img_res
    warps = warps.reshape(batch, n, 3, height, width)
    return warps.mean(1) + comb_block(warps.view(batch, -1, height, width))


class AmtS(nn.Module):
    """Attribute names are AMT-S.py's (feat_encoder, encoder, decoder1..4, update2..4, comb_block)."""

    def __init__(self, cfg: AmtConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or AmtConfig()
        ch = cfg.channels
        self.feat_encoder = FeatureEncoder(cfg.feature_dim, "instance", cfg.encoder_stages, bottleneck=True)
        self.encoder = Encoder(ch)
        self.decoder4 = InitDecoder(ch[3], ch[2], cfg.skip_channels)
        self.decoder3 = IntermediateDecoder(ch[2], ch[1], cfg.skip_channels)
        self.decoder2 = IntermediateDecoder(ch[1], ch[0], cfg.skip_channels)
        self.decoder1 = MultiFlowDecoder(ch[0], cfg.skip_channels, cfg.num_flows)
        self.update4 = SmallUpdateBlock(cfg, ch[2], None)
        self.update3 = SmallUpdateBlock(cfg, ch[1], 2)
        self.update2 = SmallUpdateBlock(cfg, ch[0], 4)
        n = cfg.num_flows
        self.comb_block = nn.Sequential(nn.Conv2d(3 * n, 6 * n, 3, 1, 1), nn.PReLU(6 * n), nn.Conv2d(6 * n, 3, 3, 1, 1))

    @staticmethod
    def _lookup(corr_fn, coord, flow0, flow1, embt, downsample: int):
        # flows from t to 0 and 1, rescaled to 0 -> 1 and 1 -> 0 under the linear-motion assumption
        if downsample != 1:
            flow0 = (1 / downsample) * resize(flow0, 1 / downsample)
            flow1 = (1 / downsample) * resize(flow1, 1 / downsample)
        corr0, corr1 = corr_fn(coord + flow1 * (1.0 / embt), coord + flow0 * (1.0 / (1.0 - embt)))
        return torch.cat([corr0, corr1], dim=1), torch.cat([flow0, flow1], dim=1)

    def _refine(self, update, corr_fn, coord, flow0, flow1, ft, embt, downsample):
        corr, flow = self._lookup(corr_fn, coord, flow0, flow1, embt, downsample)
        delta_ft, delta_flow = update(ft, flow, corr)
        d0, d1 = torch.chunk(delta_flow, 2, 1)
        return flow0 + d0, flow1 + d1, ft + delta_ft

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, embt: torch.Tensor, scale_factor: float = 1.0):
        """The interpolated frame at time `embt` (B, 1, 1, 1) between img0 and img1 (B, 3, H, W) in 0..1,
        H and W multiples of 16; clamped to 0..1 as upstream."""
        if scale_factor != 1.0:
            raise ValueError(f"scale_factor={scale_factor}: only 1.0 (VBench's setting here) is implemented")
        mean = torch.cat([img0, img1], 2).mean(1, keepdim=True).mean(2, keepdim=True).mean(3, keepdim=True)
        img0, img1 = img0 - mean, img1 - mean
        batch, _, height, width = img0.shape
        coord = coords_grid(batch, height // DOWNSAMPLE, width // DOWNSAMPLE, img0.device)
        fmap0, fmap1 = self.feat_encoder([img0, img1])
        corr_fn = BidirCorrelation(fmap0, fmap1, self.cfg.corr_levels, self.cfg.corr_radius)
        f0_1, f0_2, f0_3, f0_4 = self.encoder(img0)
        f1_1, f1_2, f1_3, f1_4 = self.encoder(img1)
        flow0, flow1, ft = self.decoder4(f0_4, f1_4, embt)
        flow0, flow1, ft = self._refine(self.update4, corr_fn, coord, flow0, flow1, ft, embt, 1)
        flow0, flow1, ft = self.decoder3(ft, f0_3, f1_3, flow0, flow1)
        flow0, flow1, ft = self._refine(self.update3, corr_fn, coord, flow0, flow1, ft, embt, 2)
        flow0, flow1, ft = self.decoder2(ft, f0_2, f1_2, flow0, flow1)
        flow0, flow1, ft = self._refine(self.update2, corr_fn, coord, flow0, flow1, ft, embt, 4)
        flow0, flow1, mask, img_res = self.decoder1(ft, f0_1, f1_1, flow0, flow1)
        pred = multi_flow_combine(self.comb_block, img0, img1, flow0, flow1, mask, img_res, mean)
        return torch.clamp(pred, 0, 1)


def load_amt_s(path: Path) -> AmtS:
    """`amt-s.pth`: AMT's trainer checkpoint, weights under ``state_dict`` (VBench loads exactly that)."""
    sd = tensors_under(read_checkpoint(path), Path(path), "state_dict")
    return load_checked(AmtS, sd, Path(path), "AMT-S")
