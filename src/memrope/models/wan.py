"""The causal Wan2.1 text-to-video transformer, in the original Wan parameter layout.

Parameter names match the Wan2.1 / Self-Forcing / LongLive generator state dicts (after stripping
``model.``), so real checkpoints load without renaming. The model knows nothing about cache
policies: self-attention rotates the chunk's queries and keys with the positions the cache planned,
hands its keys and values to the cache and attends to whatever context the cache returns.

Time conditioning is per latent frame ([B, F]); at inference all frames of a chunk share a step.
Modulation arithmetic runs in fp32, as in Wan, whatever the weight dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..cache.base import KVCache
from ..cache.plan import CacheGeometry
from .rope import Rope3D, apply_rope
from .wan_config import WanConfig

SINUSOID_BASE = 10000.0
"""Base of Wan's sinusoidal timestep embedding."""


class WanRMSNorm(nn.Module):
    """RMSNorm over the full model width (Wan normalises q/k before splitting heads)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Wan's x * rsqrt(mean(x^2) + eps) in fp32, cast back, then the weight: one fused kernel.
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back (Wan's numerics), whatever the weight dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding: [cos | sin] of t * base^(-k / half); t: [N] -> [N, dim] (fp32)."""
    half = dim // 2
    exponent = -torch.arange(half, dtype=torch.float64, device=t.device) / half
    angles = torch.outer(t.to(torch.float64), torch.pow(SINUSOID_BASE, exponent))
    return torch.cat([angles.cos(), angles.sin()], dim=1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, n_frames: int) -> torch.Tensor:
    """x [B, F*S, dim] * (1 + scale) + shift with per-frame shift/scale [B, F, 1, dim]; fp32 math."""
    y = x.float().unflatten(1, (n_frames, -1)) * (1 + scale) + shift  # [B, F, S, dim]
    return y.flatten(1, 2).to(x.dtype)


def gate(x: torch.Tensor, g: torch.Tensor, n_frames: int) -> torch.Tensor:
    return (x.float().unflatten(1, (n_frames, -1)) * g).flatten(1, 2).to(x.dtype)


@dataclass
class TextContext:
    """Cross-attention keys and values of one prompt (batch), per layer: [B, text_len, H, D]."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]


class Projections(nn.Module):
    """q/k/v/o projections with RMSNorm on q and k: the parameters both attentions share."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(cfg.dim, cfg.dim) for _ in range(4))
        self.norm_q = WanRMSNorm(cfg.dim, cfg.eps)
        self.norm_k = WanRMSNorm(cfg.dim, cfg.eps)


class SelfAttention(Projections):
    def forward(self, x: torch.Tensor, cache: KVCache, layer_idx: int, commit: bool) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.norm_q(self.q(x)).view(b, n, self.heads, self.head_dim)  # [B, L, H, D]
        k = self.norm_k(self.k(x)).view(b, n, self.heads, self.head_dim)
        v = self.v(x).view(b, n, self.heads, self.head_dim)
        k_ctx, v_ctx = cache.update(layer_idx, apply_rope(k, cache.query_freqs), v, k_raw=k, commit=commit,
                                    q_raw=q)
        q = apply_rope(q, cache.query_freqs)  # positions planned once per chunk, shared by all passes
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k_ctx.transpose(1, 2), v_ctx.transpose(1, 2))
        return self.o(out.transpose(1, 2).flatten(2))  # [B, L, dim]


class CrossAttention(Projections):
    """Text cross-attention; its text keys/values are projected once per prompt."""

    def project_text(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = ctx.shape
        k = self.norm_k(self.k(ctx)).view(b, n, self.heads, self.head_dim)
        return k, self.v(ctx).view(b, n, self.heads, self.head_dim)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.norm_q(self.q(x)).view(b, n, self.heads, self.head_dim)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o(out.transpose(1, 2).flatten(2))


class WanBlock(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm1 = WanLayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(cfg)
        self.norm3 = WanLayerNorm(cfg.dim, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm \
            else nn.Identity()
        self.cross_attn = CrossAttention(cfg)
        self.norm2 = WanLayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim**0.5)

    def forward(self, x, e0, text_k, text_v, cache: KVCache, layer_idx: int, commit: bool) -> torch.Tensor:
        n_frames = e0.shape[1]
        shift1, scale1, gate1, shift2, scale2, gate2 = (
            (self.modulation.float().unsqueeze(1) + e0).chunk(6, dim=2)  # 6 x [B, F, 1, dim]
        )
        y = self.self_attn(modulate(self.norm1(x), shift1, scale1, n_frames), cache, layer_idx, commit)
        x = x + gate(y, gate1, n_frames)
        x = x + self.cross_attn(self.norm3(x), text_k, text_v)
        y = self.ffn(modulate(self.norm2(x), shift2, scale2, n_frames))
        return x + gate(y, gate2, n_frames)


class WanHead(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm = WanLayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation.float().unsqueeze(1) + e.unsqueeze(2)).chunk(2, dim=2)
        return self.head(modulate(self.norm(x), shift, scale, e.shape[1]))


class WanModel(nn.Module):
    """Causal Wan2.1 T2V transformer predicting flow velocity for one chunk of latent frames."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.config = cfg
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch, stride=cfg.patch)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(),
                                            nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = WanHead(cfg)
        self.rope = Rope3D(cfg.head_dim, cfg.rope_max_positions)

    # ----------------------------------------------------------------- shapes
    def grid_for(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        _, ph, pw = self.config.patch
        h, w = latent_hw
        if h % ph or w % pw:
            raise ValueError(f"latent size {latent_hw} is not divisible by the patch {(ph, pw)}")
        return h // ph, w // pw

    def cache_geometry(self, batch: int, latent_hw: tuple[int, int], chunk_frames: int) -> CacheGeometry:
        p = next(self.parameters())
        return CacheGeometry(num_layers=self.config.num_layers, batch=batch, heads=self.config.num_heads,
                             head_dim=self.config.head_dim, grid=self.grid_for(latent_hw),
                             chunk_frames=chunk_frames, dtype=p.dtype, device=p.device)

    # ----------------------------------------------------------------- text, once per prompt
    def encode_text(self, context: torch.Tensor) -> TextContext:
        """context: [B, text_len, text_dim] umT5 states, zero past each prompt's length."""
        cfg = self.config
        if context.ndim != 3 or context.shape[1:] != (cfg.text_len, cfg.text_dim):
            raise ValueError(f"text context must be [B, {cfg.text_len}, {cfg.text_dim}], got "
                             f"{list(context.shape)}")
        p = next(self.parameters())
        ctx = self.text_embedding(context.to(device=p.device, dtype=p.dtype))  # [B, Lt, dim]
        pairs = [blk.cross_attn.project_text(ctx) for blk in self.blocks]
        return TextContext(k=[k for k, _ in pairs], v=[v for _, v in pairs])

    # ----------------------------------------------------------------- one pass over a chunk
    def forward(self, x: torch.Tensor, t: torch.Tensor, text: TextContext, cache: KVCache,
                commit: bool = False) -> torch.Tensor:
        """x: [B, C, F, H, W] latents at noise level t ([B] or [B, F]); returns velocity, same shape."""
        plan = cache.plan
        if plan is None:
            raise RuntimeError("call cache.begin_chunk() before running the model on a chunk")
        b, _, n_frames, lh, lw = x.shape
        if n_frames != plan.n_frames:
            raise ValueError(f"chunk has {n_frames} frames but the cache planned {plan.n_frames}")
        p = next(self.parameters())
        tokens = self.patch_embedding(x.to(p.dtype))  # [B, dim, F, h, w]
        grid = tuple(tokens.shape[-2:])
        if grid != cache.geometry.grid:
            raise ValueError(f"latent grid {grid} does not match the cache's {cache.geometry.grid}")
        h = tokens.flatten(2).transpose(1, 2)  # [B, F*h*w, dim]
        if t.numel() == b:
            t = t.reshape(b, 1).expand(b, n_frames)
        elif t.numel() == b * n_frames:
            t = t.reshape(b, n_frames)
        else:
            raise ValueError(f"t must hold one timestep per sample or per frame, got {list(t.shape)}")
        cfg = self.config
        e = self.time_embedding(sinusoidal_embedding(cfg.freq_dim, t.flatten()).to(p.dtype))
        e = e.unflatten(0, (b, n_frames)).float()  # [B, F, dim]
        e0 = self.time_projection(e.to(p.dtype)).unflatten(-1, (6, cfg.dim)).float()  # [B, F, 6, dim]
        for i, block in enumerate(self.blocks):
            h = block(h, e0, text.k[i], text.v[i], cache, i, commit)
        out = self.head(h, e)  # [B, F*h*w, out_dim * pt*ph*pw]
        return self.unpatchify(out, n_frames, grid)

    def unpatchify(self, x: torch.Tensor, n_frames: int, grid: tuple[int, int]) -> torch.Tensor:
        pt, ph, pw = self.config.patch
        h, w = grid
        c = self.config.out_dim
        x = x.view(x.shape[0], n_frames, h, w, pt, ph, pw, c)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, c, F, pt, h, ph, w, pw]
        return x.reshape(x.shape[0], c, n_frames * pt, h * ph, w * pw)
