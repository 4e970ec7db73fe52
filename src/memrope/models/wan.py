"""The causal Wan2.1 text-to-video transformer, in the original Wan parameter layout.

Parameter names match the Wan2.1 / Self-Forcing / LongLive generator state dicts (after stripping
``model.``), so real checkpoints load without renaming. The model knows nothing about cache
policies: self-attention rotates the chunk's queries and keys with the positions the cache planned,
hands its keys and values to the cache and attends to whatever context the cache returns.

Time conditioning is per latent frame ([B, F]); at inference all frames of a chunk share a step,
and a generator computes the conditioning once per timestep (:meth:`WanModel.condition`).
Modulation arithmetic runs in fp32, as in Wan, whatever the weight dtype.

Two paths compute a pass: the modules below (readable, the reference; they honour hooks and
autograd) and :mod:`memrope.models.wan_fused` (fewer, larger operations on parameters bound once),
which inference takes whenever it can (:meth:`WanModel.fused_params`); tests hold them equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..cache.base import KVCache
from ..cache.plan import CacheGeometry
from ..cache.split import Stage
from ..rope import Rope3D, apply_rope
from .lora_linear import LoraLinear
from .wan_config import WanConfig
from .wan_fused import (
    EAGER,
    BlockLora,
    BlockModulation,
    FusedBlock,
    FusedKernels,
    FusedLora,
    FusedParams,
    block_forward,
    cast,
    fp32,
    fused_modulation,
    head_forward,
    patch_embed,
    rms_norm,
    rms_scale,
)

SINUSOID_BASE = 10000.0
"""Base of Wan's sinusoidal timestep embedding."""


class WanRMSNorm(nn.Module):
    """RMSNorm over the full model width (Wan normalises q/k before splitting heads)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back (Wan's numerics), whatever the weight dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else fp32(self.weight)
        bias = None if self.bias is None else fp32(self.bias)
        return cast(F.layer_norm(fp32(x), self.normalized_shape, weight, bias, self.eps), x.dtype)


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding: [cos | sin] of t * base^(-k / half); t: [N] -> [N, dim] (fp32)."""
    half = dim // 2
    exponent = -torch.arange(half, dtype=torch.float64, device=t.device) / half
    angles = torch.outer(t.to(torch.float64), torch.pow(SINUSOID_BASE, exponent))
    return torch.cat([angles.cos(), angles.sin()], dim=1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale_1p: torch.Tensor, n_frames: int) -> torch.Tensor:
    """x [B, F*S, dim] * (1 + scale) + shift, given ``scale_1p`` = 1 + scale; per-frame shift/scale
    [B, F or 1, 1, dim]; fp32 math."""
    y = fp32(x).unflatten(1, (n_frames, -1)) * scale_1p + shift  # [B, F, S, dim]
    return cast(y.flatten(1, 2), x.dtype)


def gate(x: torch.Tensor, g: torch.Tensor, n_frames: int) -> torch.Tensor:
    return cast((fp32(x).unflatten(1, (n_frames, -1)) * g).flatten(1, 2), x.dtype)


@dataclass(frozen=True)
class Conditioning:
    """Everything a pass derives from its timesteps alone: the time embedding and every block's
    modulation. Few-step sampling visits the same handful of timesteps in every chunk, so a
    generator computes this once per timestep (:meth:`WanModel.condition`) and every later pass
    skips ~10 operations per block; outputs are bit-identical to conditioning on the fly.

    ``frames`` is 1 when all frames of a chunk share the step (broadcast), else the chunk's F; only
    then are the fused path's shapes (``fused``, ``fused_head``) filled in.
    """

    batch: int
    frames: int
    blocks: tuple[BlockModulation, ...]
    head_shift: torch.Tensor  # [B, F or 1, 1, dim] fp32
    head_scale: torch.Tensor  # 1 + scale, same shape
    fused: tuple[BlockModulation, ...] | None = None
    fused_head: tuple[torch.Tensor, torch.Tensor] | None = None


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
        q = self.norm_q(self.q(x)).view(b, n, self.heads, self.head_dim)  # [B, L, H, D]
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

    def modulation_for(self, e0: torch.Tensor) -> BlockModulation:
        """e0 [B, F, 6, dim] (fp32) -> this block's six modulation tensors [B, F, 1, dim]."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (fp32(self.modulation).unsqueeze(1) + e0).chunk(6, dim=2)
        return BlockModulation(shift1, 1 + scale1, gate1, shift2, 1 + scale2, gate2)

    def forward(self, x: torch.Tensor, mod: BlockModulation, n_frames: int, text_k: torch.Tensor,
                text_v: torch.Tensor, cache: KVCache, layer_idx: int, commit: bool) -> torch.Tensor:
        y = self.self_attn(modulate(self.norm1(x), mod.shift1, mod.scale1, n_frames), cache, layer_idx, commit)
        x = x + gate(y, mod.gate1, n_frames)
        x = x + self.cross_attn(self.norm3(x), text_k, text_v)
        y = self.ffn(modulate(self.norm2(x), mod.shift2, mod.scale2, n_frames))
        return x + gate(y, mod.gate2, n_frames)


class WanHead(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm = WanLayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def modulation_for(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """e [B, F, dim] (fp32) -> (shift, 1 + scale), each [B, F, 1, dim]."""
        shift, scale = (fp32(self.modulation).unsqueeze(1) + e.unsqueeze(2)).chunk(2, dim=2)
        return shift, 1 + scale

    def forward(self, x: torch.Tensor, cond: Conditioning, n_frames: int) -> torch.Tensor:
        return self.head(modulate(self.norm(x), cond.head_shift, cond.head_scale, n_frames))


def _stackable(*linears: LoraLinear) -> bool:
    """Adapters the fused path can run as one stacked matmul: one rank, one scale, one dtype."""
    return len({(m.lora_A.shape[0], m.scale, m.lora_A.dtype) for m in linears}) == 1


def _fused_lora(*linears: nn.Linear) -> FusedLora | None:
    """The fused path's view of the adapters of Linears that read one input (None when they have none)."""
    if type(linears[0]) is not LoraLinear:
        return None
    return FusedLora(a=torch.cat([m.lora_A for m in linears]).detach(), b=tuple(m.lora_B.detach() for m in linears),
                     scale=linears[0].scale)


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
        self._fused: tuple[tuple, FusedParams] | None = None  # memo of fused_params(): derived, not state
        self._stages: list[Stage] | None = None  # blocks over devices (split_blocks); None: one device
        self._stage_params: dict[tuple[int, str], FusedParams] = {}  # fused params with per-device constants

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

    # ----------------------------------------------------------------- blocks over devices
    def split_blocks(self, devices: list[torch.device], boundaries: list[int] | None = None) -> None:
        """Run the blocks on several devices: block ``boundaries[j - 1] .. boundaries[j] - 1`` on
        ``devices[j]`` (default: equal halves). The embeddings stay with the first blocks, the head goes
        with the last (the MemRoPE reference's 2-GPU map). The cache follows (``cache.split``).

        Pipelining: a pass must run through all blocks before the next pass starts, so within a chunk
        the devices take turns. Across chunks, the next chunk's first pass on the first device needs
        only that device's layers of the commit pass; the generator synchronises with the first device
        only, so the second finishes the commit while the first begins the next chunk (one half-pass
        of overlap per chunk; the decoder, on the second device by default, overlaps as usual)."""
        n = self.config.num_layers
        if len(devices) < 2:
            raise ValueError(f"--split-blocks needs two or more devices, got {len(devices)}")
        if boundaries is None:
            boundaries = [round(n * j / len(devices)) for j in range(1, len(devices))]
        edges = [0, *boundaries, n]
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"--split-blocks: {len(devices)} devices cannot share {n} blocks at {boundaries}")
        for j, device in enumerate(devices):
            for i in range(edges[j], edges[j + 1]):
                self.blocks[i].to(device)
        self.head.to(devices[-1])
        self._fused = None  # submodules moved without WanModel._apply: drop the binding
        self._stage_params = {}
        self._stages = [Stage(edges[j], edges[j + 1], torch.device(d)) for j, d in enumerate(devices)]

    def stages(self) -> list[Stage]:
        """Which layers run where: one stage on the parameters' device unless :meth:`split_blocks`."""
        if self._stages is not None:
            return list(self._stages)
        return [Stage(0, self.config.num_layers, next(self.parameters()).device)]

    def _params_on(self, fp: FusedParams, first: int, device: torch.device) -> FusedParams:
        """``fp`` with its shared constant on ``device`` (the blocks' weights are there already)."""
        if fp.eps_norm.device == device:
            return fp
        key = (first, str(device))
        if key not in self._stage_params or self._stage_params[key].blocks is not fp.blocks:
            self._stage_params[key] = fp._replace(eps_norm=fp.eps_norm.to(device))
        return self._stage_params[key]

    # ----------------------------------------------------------------- text, once per prompt
    def encode_text(self, context: torch.Tensor) -> TextContext:
        """context: [B, text_len, text_dim] umT5 states, zero past each prompt's length."""
        cfg = self.config
        if context.ndim != 3 or context.shape[1:] != (cfg.text_len, cfg.text_dim):
            raise ValueError(f"text context must be [B, {cfg.text_len}, {cfg.text_dim}], got "
                             f"{list(context.shape)}")
        p = next(self.parameters())
        ctx = self.text_embedding(context.to(device=p.device, dtype=p.dtype))  # [B, Lt, dim]
        pairs = [blk.cross_attn.project_text(ctx.to(blk.modulation.device)) for blk in self.blocks]
        return TextContext(k=[k for k, _ in pairs], v=[v for _, v in pairs])

    # ----------------------------------------------------------------- time, once per timestep
    def condition(self, t: torch.Tensor, batch: int, n_frames: int) -> Conditioning:
        """Time embedding and every block's modulation for timesteps ``t``: [B] (all frames share
        a step; broadcast over frames) or [B, F] (one step per frame, as in training)."""
        if t.numel() == batch:
            t = t.reshape(batch, 1)
        elif t.numel() == batch * n_frames:
            t = t.reshape(batch, n_frames)
        else:
            raise ValueError(f"t must hold one timestep per sample or per frame, got {list(t.shape)}")
        cfg = self.config
        p = next(self.parameters())
        b, f = t.shape
        e = self.time_embedding(sinusoidal_embedding(cfg.freq_dim, t.flatten()).to(p.dtype))
        e = e.unflatten(0, (b, f)).float()  # [B, F or 1, dim]
        e0 = self.time_projection(e.to(p.dtype)).unflatten(-1, (6, cfg.dim)).float()  # [B, F or 1, 6, dim]
        head_shift, head_scale = self.head.modulation_for(e.to(self.head.modulation.device))
        blocks = tuple(block.modulation_for(e0.to(block.modulation.device)) for block in self.blocks)
        fused = fused_head = None
        if f == 1:  # every frame shares the step: the fused path's shapes, made once here
            fused = tuple(BlockModulation(*fused_modulation(*m)) for m in blocks)
            fused_head = fused_modulation(head_shift, head_scale)
        return Conditioning(batch=b, frames=f, blocks=blocks, head_shift=head_shift, head_scale=head_scale,
                            fused=fused, fused_head=fused_head)

    # ----------------------------------------------------------------- the fused inference path
    def _apply(self, fn, recurse=True):
        """``to()``, ``half()``, ``cuda()``... swap parameter data without moving their versions, so
        the fused binding is dropped here rather than trusted."""
        self._fused = None
        self._stages = None  # a move of the whole model puts every block on one device
        self._stage_params = {}
        return super()._apply(fn, recurse)

    def fused_params(self) -> FusedParams | None:
        """Parameters bound for :mod:`memrope.models.wan_fused`, or None when the module path must run:
        gradients are being recorded for a parameter (training), or a module the fused path bypasses
        has hooks, is wrapped or subclassed. Memoised while every parameter is the same tensor at the
        same version (a load, a LoRA merge or any in-place edit moves the version), so a caller may
        bind once per chunk."""
        params = list(self.parameters())
        if (torch.is_grad_enabled() and any(p.requires_grad for p in params)) or not self._fusable():
            return None
        key = tuple((id(p), p._version) for p in params)
        if self._fused is None or self._fused[0] != key:
            self._fused = (key, self._bind())
        return self._fused[1]

    def _fusable(self) -> bool:
        hooks = nn.modules.module
        if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
            return False
        expected = {WanBlock, SelfAttention, CrossAttention, WanLayerNorm, WanRMSNorm, nn.Linear, LoraLinear,
                    nn.Sequential, nn.GELU, nn.Identity}
        for block in self.blocks:
            for m in block.modules():
                if type(m) not in expected or m._forward_hooks or m._forward_pre_hooks:
                    return False
            qkv = [type(m) is LoraLinear for m in (block.self_attn.q, block.self_attn.k, block.self_attn.v)]
            if any(qkv) and not (all(qkv) and _stackable(block.self_attn.q, block.self_attn.k, block.self_attn.v)):
                return False  # q, k, v run as one matmul: their adapters must stack
            gelu = block.ffn[1]
            if len(block.ffn) != 3 or type(gelu) is not nn.GELU or gelu.approximate != "tanh":
                return False
        edges = [self.patch_embedding, *self.head.modules()]
        return all(type(m) in (nn.Conv3d, WanHead, WanLayerNorm, nn.Linear)
                   and not (m._forward_hooks or m._forward_pre_hooks) for m in edges)

    def _bind(self) -> FusedParams:
        def ln(norm: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
            if isinstance(norm, nn.Identity):
                return None, None
            return (None if norm.weight is None else fp32(norm.weight.detach()),
                    None if norm.bias is None else fp32(norm.bias.detach()))

        blocks = []
        for blk in self.blocks:
            sa, ca, ffn = blk.self_attn, blk.cross_attn, blk.ffn
            w_ln3, b_ln3 = ln(blk.norm3)
            lora = BlockLora(qkv=_fused_lora(sa.q, sa.k, sa.v), o=_fused_lora(sa.o), cq=_fused_lora(ca.q),
                             co=_fused_lora(ca.o), ffn1=_fused_lora(ffn[0]), ffn2=_fused_lora(ffn[2]))
            blocks.append(FusedBlock(
                w_qkv=torch.cat([sa.q.weight, sa.k.weight, sa.v.weight]).detach(),
                b_qkv=torch.cat([sa.q.bias, sa.k.bias, sa.v.bias]).detach(),
                w_qk_norm=rms_scale(torch.stack([sa.norm_q.weight, sa.norm_k.weight])),
                w_o=sa.o.weight.detach(), b_o=sa.o.bias.detach(), w_ln3=w_ln3, b_ln3=b_ln3,
                w_cq=ca.q.weight.detach(), b_cq=ca.q.bias.detach(), w_cq_norm=rms_scale(ca.norm_q.weight),
                w_co=ca.o.weight.detach(), b_co=ca.o.bias.detach(),
                w_ffn1=ffn[0].weight.detach(), b_ffn1=ffn[0].bias.detach(),
                w_ffn2=ffn[2].weight.detach(), b_ffn2=ffn[2].bias.detach(), lora=lora))
        cfg = self.config
        patch = self.patch_embedding
        return FusedParams(blocks=tuple(blocks), w_patch=patch.weight.detach().flatten(1),
                           b_patch=patch.bias.detach(),
                           patch=tuple(cfg.patch), w_head=self.head.head.weight.detach(),
                           b_head=self.head.head.bias.detach(), heads=cfg.num_heads, head_dim=cfg.head_dim,
                           eps=cfg.eps, eps_norm=torch.tensor((cfg.dim * cfg.eps) ** 0.5,
                                                              device=patch.weight.device))

    # ----------------------------------------------------------------- one pass over a chunk
    def forward(self, x: torch.Tensor, t: torch.Tensor | Conditioning, text: TextContext, cache: KVCache,
                commit: bool = False, fused: FusedParams | None | bool = True,
                kernels: FusedKernels = EAGER) -> torch.Tensor:
        """x: [B, C, F, H, W] latents at noise level t ([B] or [B, F], or its precomputed
        :class:`Conditioning`); returns the velocity, same shape.

        ``fused``: True binds the fused path's parameters here (:meth:`fused_params`), a
        :class:`FusedParams` uses those (a caller that binds once per chunk), False or None runs
        the module path. The fused path runs only for a step shared by all frames, with ``kernels``
        (eager, or compiled: :func:`memrope.models.wan_fused.compiled_kernels`)."""
        plan = cache.plan
        if plan is None:
            raise RuntimeError("call cache.begin_chunk() before running the model on a chunk")
        b, _, n_frames, lh, lw = x.shape
        if n_frames != plan.n_frames:
            raise ValueError(f"chunk has {n_frames} frames but the cache planned {plan.n_frames}")
        cond = t if isinstance(t, Conditioning) else self.condition(t, b, n_frames)
        if cond.batch != b or cond.frames not in (1, n_frames):
            raise ValueError(f"conditioning for batch {cond.batch} x {cond.frames} frames does not fit a "
                             f"chunk of batch {b} x {n_frames} frames")
        grid = self.grid_for((lh, lw))
        if grid != cache.geometry.grid:
            raise ValueError(f"latent grid {grid} does not match the cache's {cache.geometry.grid}")
        x = cast(x, self.patch_embedding.weight.dtype)
        fp = self.fused_params() if fused is True else (fused or None)
        parts = cache.parts()  # (first layer, cache) per device: one unless the blocks are split
        if fp is not None and cond.fused is not None:
            h = patch_embed(fp, x)  # [B, F*h*w, dim]
            for first, part in parts:
                h = h.to(part.geometry.device)  # the hidden state moves to the next device (a no-op on one)
                stage_fp = self._params_on(fp, first, h.device)
                for j in range(part.geometry.num_layers):
                    i = first + j
                    h = block_forward(fp.blocks[i], cond.fused[i], stage_fp, h, text.k[i], text.v[i], part, j,
                                      commit, kernels)
            out = head_forward(fp, *cond.fused_head, h)
        else:
            h = self.patch_embedding(x).flatten(2).transpose(1, 2)  # [B, dim, F, h, w] -> [B, F*h*w, dim]
            for first, part in parts:
                h = h.to(part.geometry.device)
                for j in range(part.geometry.num_layers):
                    i = first + j
                    h = self.blocks[i](h, cond.blocks[i], n_frames, text.k[i], text.v[i], part, j, commit)
            out = self.head(h, cond, n_frames)  # [B, F*h*w, out_dim * pt*ph*pw]
        out = self.unpatchify(out, n_frames, grid)
        # Over split blocks a commit pass's output (never read) stays on the last device: copying it
        # back would make the first device wait for the second, which instead finishes the commit
        # while the first starts the next chunk (the pipelining of ``split_blocks``).
        return out if commit else out.to(x.device)

    def unpatchify(self, x: torch.Tensor, n_frames: int, grid: tuple[int, int]) -> torch.Tensor:
        pt, ph, pw = self.config.patch
        h, w = grid
        c = self.config.out_dim
        x = x.view(x.shape[0], n_frames, h, w, pt, ph, pw, c)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, c, F, pt, h, ph, w, pw]
        return x.reshape(x.shape[0], c, n_frames * pt, h * ph, w * pw)
