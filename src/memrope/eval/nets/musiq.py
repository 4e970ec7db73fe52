"""MUSIQ (Ke et al., ICCV 2021), the image-quality transformer behind VBench's imaging quality, with
pyiqa's SPAQ weights (`musiq_spaq_ckpt-358bb6af.pth`).

Follows chaofengc/IQA-PyTorch@01ae427f ``pyiqa/archs/musiq_arch.py`` (MUSIQ, StdConv, Bottleneck,
TransformerEncoder) and ``pyiqa/matlab_utils/padding.py`` (ExactPadding2d). VBench builds
``MUSIQ(pretrained_model_path=...)``: patch 32, hidden 384, MLP 1152, 6 heads, 14 layers, 3 scales,
10x10 hash grid, one output (the SPAQ head), scores on a 0..100 scale. Each 32x32 patch goes through a
weight-standardised ResNet root (7x7/2 conv, GroupNorm, ReLU, 3x3/2 max pool with 'SAME' padding) and
one bottleneck block, is flattened in TensorFlow (H, W, C) order and embedded; hash-position and
scale embeddings are added, a CLS token prepended, padded patches masked out of attention.

Deviations: the dropout and drop-path modules (rate 0 in eval) are not built; the AVA 10-class head
(not VBench's) is not supported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from memrope.eval.nets.loading import load_checked, read_checkpoint, strip_prefix, tensors_under
from memrope.eval.nets.musiq_patches import EXTRA_CHANNELS, HASH_GRID, LONGER_SIDES, PATCH_SIZE, multiscale_patches

RESNET_TOKEN_DIM = 64  # musiq_arch.py: resnet_token_dim
BOTTLENECK_EXPANSION = 4
GROUPS = 32
ROOT_GN_EPS = 1e-6
BLOCK_GN_EPS = 1e-4
LN_EPS = 1e-6
STD_EPS = 1e-5  # StdConv: weight / (std + 1e-5)
MASKED_LOGIT = -1e3  # MultiHeadAttention: masked_fill(mask2d == 0, -1e3)
ROOT_KERNEL, ROOT_STRIDE, POOL_KERNEL, POOL_STRIDE = 7, 2, 3, 2


@dataclass(frozen=True)
class MusiqConfig:
    patch_size: int = PATCH_SIZE
    hidden_size: int = 384
    mlp_dim: int = 1152
    num_heads: int = 6
    num_layers: int = 14
    num_scales: int = 3
    hash_grid: int = HASH_GRID
    num_class: int = 1
    longer_sides: tuple[int, ...] = LONGER_SIDES

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_scales != len(self.longer_sides) + 1:
            raise ValueError(f"num_scales={self.num_scales}: expected len(longer_sides) + 1 (the original resolution)")
        if self.num_class != 1:
            raise ValueError("only the one-output heads (SPAQ, KonIQ, PaQ-2-PiQ) are supported")


def same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """pyiqa's exact_padding_2d(mode='same'): TensorFlow 'SAME' zero padding."""
    h, w = x.shape[-2:]
    pad_h = max(0, (math.ceil(h / stride) - 1) * stride + kernel - h)
    pad_w = max(0, (math.ceil(w / stride) - 1) * stride + kernel - w)
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


class StdConv(nn.Conv2d):
    """Weight-standardised convolution (zero mean, unit unbiased std per output channel), 'SAME' padding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = same_pad(x, self.kernel_size[0], self.stride[0])
        w = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
        w = w / (w.std((1, 2, 3), keepdim=True) + STD_EPS)
        return F.conv2d(x, w, self.bias, self.stride)


class Bottleneck(nn.Module):
    def __init__(self, inplanes: int, outplanes: int) -> None:
        super().__init__()
        width = inplanes
        self.conv1 = StdConv(inplanes, width, 1, 1, bias=False)
        self.gn1 = nn.GroupNorm(GROUPS, width, eps=BLOCK_GN_EPS)
        self.conv2 = StdConv(width, width, 3, 1, bias=False)
        self.gn2 = nn.GroupNorm(GROUPS, width, eps=BLOCK_GN_EPS)
        self.conv3 = StdConv(width, outplanes, 1, 1, bias=False)
        self.gn3 = nn.GroupNorm(GROUPS, outplanes, eps=BLOCK_GN_EPS)
        self.relu = nn.ReLU(True)
        self.needs_projection = inplanes != outplanes
        if self.needs_projection:
            self.conv_proj = StdConv(inplanes, outplanes, 1, 1, bias=False)
            self.gn_proj = nn.GroupNorm(GROUPS, outplanes, eps=BLOCK_GN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.gn_proj(self.conv_proj(x)) if self.needs_projection else x
        x = self.relu(self.gn1(self.conv1(x)))
        x = self.relu(self.gn2(self.conv2(x)))
        return self.relu(self.gn3(self.conv3(x)) + identity)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MultiHeadAttention(nn.Module):
    """Separate query/key/value/out projections; masked logits set to -1e3 (not -inf), as pyiqa."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.num_heads, c // self.num_heads).permute(0, 2, 1, 3)  # (b, h, n, d)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        attn = (q @ k.transpose(-2, -1)) * self.scale
        pair = mask.reshape(b, 1, n, 1) * mask.reshape(b, 1, 1, n)  # valid query AND valid key
        attn = attn.masked_fill(pair == 0, MASKED_LOGIT).softmax(dim=-1)
        return self.out((attn @ v).transpose(1, 2).reshape(b, n, c))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, mlp_dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attention = MultiHeadAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class AddHashSpatialPositionEmbs(nn.Module):
    def __init__(self, grid: int, dim: int) -> None:
        super().__init__()
        self.position_emb = nn.Parameter(torch.zeros(1, grid * grid, dim))

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x + self.position_emb.squeeze(0)[positions.long()]


class AddScaleEmbs(nn.Module):
    def __init__(self, num_scales: int, dim: int) -> None:
        super().__init__()
        self.scale_emb = nn.Parameter(torch.zeros(num_scales, dim))

    def forward(self, x: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return x + self.scale_emb[scales.long()]


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: MusiqConfig) -> None:
        super().__init__()
        dim = cfg.hidden_size
        self.posembed_input = AddHashSpatialPositionEmbs(cfg.hash_grid, dim)
        self.scaleembed_input = AddScaleEmbs(cfg.num_scales, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.transformer = nn.ModuleDict(
            {f"encoderblock_{i}": TransformerBlock(dim, cfg.mlp_dim, cfg.num_heads) for i in range(cfg.num_layers)}
        )

    def forward(self, x, spatial, scales, mask):
        x = self.scaleembed_input(self.posembed_input(x, spatial), scales)
        x = torch.cat([self.cls.repeat(x.shape[0], 1, 1), x], dim=1)
        mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        for block in self.transformer.values():
            x = block(x, mask)
        return self.encoder_norm(x)


class MUSIQ(nn.Module):
    """Attribute names are musiq_arch.py's, so pyiqa's checkpoints load key for key."""

    def __init__(self, cfg: MusiqConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or MusiqConfig()
        self.conv_root = StdConv(3, RESNET_TOKEN_DIM, ROOT_KERNEL, ROOT_STRIDE, bias=False)
        self.gn_root = nn.GroupNorm(GROUPS, RESNET_TOKEN_DIM, eps=ROOT_GN_EPS)
        self.block1 = Bottleneck(RESNET_TOKEN_DIM, RESNET_TOKEN_DIM * BOTTLENECK_EXPANSION)
        token_patch = cfg.patch_size // (ROOT_STRIDE * POOL_STRIDE)
        self.embedding = nn.Linear(RESNET_TOKEN_DIM * BOTTLENECK_EXPANSION * token_patch**2, cfg.hidden_size)
        self.transformer_encoder = TransformerEncoder(cfg)
        self.head = nn.Linear(cfg.hidden_size, cfg.num_class)

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """(n, seq, 3 * p * p) patch pixels -> (n, seq, hidden) tokens."""
        n, seq, _ = patches.shape
        p = self.cfg.patch_size
        x = self.gn_root(self.conv_root(patches.reshape(-1, 3, p, p)))
        x = F.max_pool2d(same_pad(F.relu(x), POOL_KERNEL, POOL_STRIDE), POOL_KERNEL, POOL_STRIDE)
        x = self.block1(x).permute(0, 2, 3, 1)  # (n * seq, p/4, p/4, C): TensorFlow's channel order
        return self.embedding(x.reshape(n, seq, -1))

    def score_patches(self, packed: torch.Tensor) -> torch.Tensor:
        """(n, seq, 3 * p * p + 3) from `multiscale_patches` -> (n,) quality scores."""
        spatial, scales, mask = packed[..., -3], packed[..., -2], packed[..., -1].bool()
        x = self.embed_patches(packed[..., :-EXTRA_CHANNELS])
        x = self.transformer_encoder(x, spatial, scales, mask)
        return self.head(x[:, 0]).squeeze(-1)  # one class: dist_to_mos is the identity

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) images in 0..1 -> (n,) scores (pyiqa's eval path: x -> 2x - 1, patches, network)."""
        packed = multiscale_patches((images - 0.5) * 2, self.cfg.patch_size, self.cfg.hash_grid, self.cfg.longer_sides)
        return self.score_patches(packed)


def load_musiq(path: Path, cfg: MusiqConfig | None = None) -> MUSIQ:
    """A pyiqa MUSIQ checkpoint (a flat state dict; ``module.`` stripped as pyiqa's clean_state_dict does),
    checked against `cfg` (VBench's MUSIQ by default)."""
    cfg = cfg or MusiqConfig()
    sd = strip_prefix(tensors_under(read_checkpoint(path), Path(path)), "module.")
    return load_checked(lambda: MUSIQ(cfg), sd, Path(path), "MUSIQ")
