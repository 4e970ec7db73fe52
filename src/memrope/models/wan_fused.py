"""The fused inference path of the Wan transformer: the arithmetic of :mod:`memrope.models.wan`'s
modules in fewer, larger operations, on parameters bound once.

Why: at small shapes (the CPU, the embedded model, tests) a pass costs per operation, not per FLOP,
and on a GPU every operation is a kernel launch. Per block this path

- computes q, k and v with one matmul (weights concatenated once), and normalises and rotates q
  and k together;
- folds the adaLN modulation into the LayerNorm's own affine (batch 1) or one ``addcmul``;
- applies gate and residual as one ``addcmul``;
- reads parameters from tuples instead of ``Module`` attribute lookups and ``__call__``;
- adds unmerged LoRA adapters (:class:`~memrope.models.lora_linear.LoraLinear`) with PEFT's operations,
  the A matrices of q, k and v stacked into one matmul.

It runs when a pass's frames share one timestep (every inference pass), no gradient is recorded and
every submodule it bypasses is plain (:meth:`WanModel.fused_params`); otherwise the module path
runs, which honours hooks and wrappers. Norms and modulation are computed in fp32 and cast once,
so in bf16 this path rounds once where Wan rounds twice; in fp32 the two paths agree to rounding
(tested). The functions here are pure: no state, no policy knowledge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

from ..rope import RopeFreqs, apply_rope

if TYPE_CHECKING:
    from ..cache.base import KVCache


def fp32(x: torch.Tensor) -> torch.Tensor:
    """``x.float()`` without the call when ``x`` already is fp32 (tiny shapes pay per operation)."""
    return x if x.dtype == torch.float32 else x.float()


def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x if x.dtype == dtype else x.to(dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Wan's x * rsqrt(mean(x^2) + eps) over the last dim in fp32, cast back, then the weight."""
    return cast(F.rms_norm(fp32(x), (x.shape[-1],), eps=eps), x.dtype) * weight


def rms_norm_fused(x: torch.Tensor, weight_scaled: torch.Tensor, eps_norm: torch.Tensor) -> torch.Tensor:
    """The same RMSNorm in four simple operations (``F.rms_norm`` is a composite of about seven on the
    CPU): x * rsqrt(mean(x^2) + eps) = x / hypot(|x|, sqrt(d eps)) * sqrt(d), with ``weight_scaled`` =
    sqrt(d) * weight (fp32) and ``eps_norm`` = sqrt(d eps) bound once. Equal to rounding."""
    xf = fp32(x)
    norm = torch.hypot(torch.linalg.vector_norm(xf, dim=-1, keepdim=True), eps_norm)
    return cast(torch.div(xf, norm).mul_(weight_scaled), x.dtype)


def rms_scale(weight: torch.Tensor) -> torch.Tensor:
    """sqrt(d) * weight in fp32, the ``weight_scaled`` of :func:`rms_norm_fused`."""
    return fp32(weight.detach()) * weight.shape[-1] ** 0.5


class FusedLora(NamedTuple):
    """An unmerged LoRA on one matmul of the fused path: the A matrices of the projections that read the
    same input, stacked ([n r, in]), each projection's B ([out_i, r]) in output order, and the scale."""

    a: torch.Tensor
    b: tuple[torch.Tensor, ...]
    scale: float


class BlockLora(NamedTuple):
    """The LoRA of each matmul of a block (None: no adapter there)."""

    qkv: FusedLora | None = None
    o: FusedLora | None = None
    cq: FusedLora | None = None
    co: FusedLora | None = None
    ffn1: FusedLora | None = None
    ffn2: FusedLora | None = None


NO_LORA = BlockLora()


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, lora: FusedLora | None) -> torch.Tensor:
    """``F.linear`` plus an unmerged LoRA added as PEFT adds it: x W^T + b + ((x A^T) B^T) s, each product
    rounded to the run dtype (:class:`~memrope.models.lora_linear.LoraLinear`)."""
    y = F.linear(x, w, bias)
    if lora is None:
        return y
    t = F.linear(cast(x, lora.a.dtype), lora.a)  # [..., n r]
    if len(lora.b) == 1:
        d = F.linear(t, lora.b[0])
    else:
        d = torch.cat([F.linear(part, b) for part, b in zip(t.chunk(len(lora.b), dim=-1), lora.b)], dim=-1)
    return y + d * lora.scale


class FusedBlock(NamedTuple):
    """One block's parameters as the fused path reads them; norm weights fp32."""

    w_qkv: torch.Tensor  # [3 dim, dim]: q, k, v rows
    b_qkv: torch.Tensor  # [3 dim]
    w_qk_norm: torch.Tensor  # [2, dim]: norm_q, norm_k, as rms_scale()
    w_o: torch.Tensor
    b_o: torch.Tensor
    w_ln3: torch.Tensor | None  # None: no cross-attention norm (cross_attn_norm=False)
    b_ln3: torch.Tensor | None
    w_cq: torch.Tensor
    b_cq: torch.Tensor
    w_cq_norm: torch.Tensor  # as rms_scale()
    w_co: torch.Tensor
    b_co: torch.Tensor
    w_ffn1: torch.Tensor
    b_ffn1: torch.Tensor
    w_ffn2: torch.Tensor
    b_ffn2: torch.Tensor
    lora: BlockLora = NO_LORA  # unmerged adapters (LoraLinear), if any


class FusedParams(NamedTuple):
    """Every block, the patch embedding as a matmul, the head, and the constants the functions need."""

    blocks: tuple[FusedBlock, ...]
    w_patch: torch.Tensor  # [dim, C * pt * ph * pw]: the Conv3d kernel, flattened
    b_patch: torch.Tensor
    patch: tuple[int, int, int]
    w_head: torch.Tensor
    b_head: torch.Tensor
    heads: int
    head_dim: int
    eps: float
    eps_norm: torch.Tensor  # sqrt(dim * eps), 0-dim fp32 (see rms_norm_fused)


class BlockModulation(NamedTuple):
    """A block's adaLN modulation at one timestep, fp32; the scales hold 1 + scale. The module path
    keeps them per frame, [B, F or 1, 1, dim]; the fused path, for a pass whose frames share a step,
    as ``[dim]`` vectors for batch 1 (LayerNorm's own affine), else ``[B, 1, dim]``."""

    shift1: torch.Tensor
    scale1: torch.Tensor
    gate1: torch.Tensor
    shift2: torch.Tensor
    scale2: torch.Tensor
    gate2: torch.Tensor


def fused_modulation(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """[B, 1, 1, dim] modulation tensors -> the fused path's shapes ([dim] for batch 1)."""
    return tuple(t.reshape(-1) if t.shape[0] == 1 else t[:, 0] for t in tensors)


def norm_modulate(x: torch.Tensor, shift: torch.Tensor, scale_1p: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm (no affine) of x [B, L, dim], times 1 + scale, plus shift; fp32, cast once."""
    xf = fp32(x)
    if shift.dim() == 1:  # batch 1: the modulation is exactly a LayerNorm affine
        y = F.layer_norm(xf, (x.shape[-1],), scale_1p, shift, eps)
    else:
        y = torch.addcmul(shift, F.layer_norm(xf, (x.shape[-1],), None, None, eps), scale_1p)
    return cast(y, x.dtype)


def gate_residual(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """x + y * g (fp32, cast once)."""
    return cast(torch.addcmul(fp32(x), fp32(y), g), x.dtype)


def rope_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """:func:`~memrope.rope.apply_rope` in real arithmetic, (x0 cos - x1 sin, x1 cos + x0 sin) per pair:
    what the compiled kernels use (inductor fuses it into one loop; complex views it does not lower)."""
    pairs = fp32(x).unflatten(-1, (-1, 2))  # [B, L, H, D/2, 2]
    x0, x1 = pairs[..., 0], pairs[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]  # [1, L, 1, D/2]
    return torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1).flatten(-2).to(x.dtype)


def attention_inputs(p: FusedBlock, shift1: torch.Tensor, scale1: torch.Tensor, x: torch.Tensor,
                     freqs: RopeFreqs, heads: int, head_dim: int, eps: float, eps_norm: torch.Tensor,
                     real_rope: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The block up to the cache: x [B, L, dim] -> (q and k normalised and rotated [B, L, 2H, D],
    q and k normalised, unrotated [B, L, 2H, D], v [B, L, H, D]); q heads first, then k heads."""
    b, n, dim = x.shape
    qkv = linear(norm_modulate(x, shift1, scale1, eps), p.w_qkv, p.b_qkv, p.lora.qkv)  # [B, L, 3 dim]
    qk = rms_norm_fused(qkv[..., :2 * dim].unflatten(-1, (2, dim)), p.w_qk_norm, eps_norm)  # [B, L, 2, dim]
    qk = qk.view(b, n, 2 * heads, head_dim)
    v = qkv[..., 2 * dim:].view(b, n, heads, head_dim)  # [B, L, H, D]
    qk_rot = rope_pairs(qk, freqs.cos, freqs.sin) if real_rope else apply_rope(qk, freqs)
    return qk_rot, qk, v


def attention_output(p: FusedBlock, m: BlockModulation, x: torch.Tensor, q_rot: torch.Tensor,
                     k_ctx: torch.Tensor, v_ctx: torch.Tensor, text_k: torch.Tensor, text_v: torch.Tensor,
                     heads: int, head_dim: int, eps: float, eps_norm: torch.Tensor) -> torch.Tensor:
    """The block from its attention context on: self-attention, cross-attention, feed-forward."""
    b, n, dim = x.shape
    lo = p.lora
    y = F.scaled_dot_product_attention(q_rot.transpose(1, 2), k_ctx.transpose(1, 2),
                                       v_ctx.transpose(1, 2))  # [B, H, L, D]
    x = gate_residual(x, linear(y.transpose(1, 2).flatten(2), p.w_o, p.b_o, lo.o), m.gate1)
    # text cross-attention (keys and values projected once per prompt)
    c = x if p.w_ln3 is None else cast(F.layer_norm(fp32(x), (dim,), p.w_ln3, p.b_ln3, eps), x.dtype)
    q = rms_norm_fused(linear(c, p.w_cq, p.b_cq, lo.cq), p.w_cq_norm, eps_norm).view(b, n, heads, head_dim)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), text_k.transpose(1, 2), text_v.transpose(1, 2))
    x = x + linear(y.transpose(1, 2).flatten(2), p.w_co, p.b_co, lo.co)
    # feed-forward
    h = F.gelu(linear(norm_modulate(x, m.shift2, m.scale2, eps), p.w_ffn1, p.b_ffn1, lo.ffn1), approximate="tanh")
    return gate_residual(x, linear(h, p.w_ffn2, p.b_ffn2, lo.ffn2), m.gate2)


class FusedKernels(NamedTuple):
    """The pure pieces of a pass the cache sits between: eager (:data:`EAGER`) or compiled
    (:func:`compiled_kernels`). ``real_rope``: rotate with cos/sin arithmetic (compiled kernels)."""

    attention_inputs: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    attention_output: Callable[..., torch.Tensor]
    real_rope: bool = False
    name: str = "eager"


EAGER = FusedKernels(attention_inputs, attention_output)


def compiled_kernels(mode: str | None = None) -> FusedKernels:
    """``torch.compile`` of both pieces (static shapes, whole graphs). Dynamo guards on shapes and
    dtypes, not on which block's parameters come in, so one graph per piece serves every block; the
    generator uses them only in the steady state, where every pass of a bounded policy has the same
    shapes (while the cache fills, the context grows and the eager pieces run instead)."""
    def compile_(fn: Callable) -> Callable:
        return torch.compile(fn, fullgraph=True, dynamic=False, mode=mode)

    return FusedKernels(compile_(attention_inputs), compile_(attention_output), real_rope=True,
                        name=f"compiled ({mode or 'default'})")


def block_forward(p: FusedBlock, m: BlockModulation, fp: FusedParams, x: torch.Tensor, text_k: torch.Tensor,
                  text_v: torch.Tensor, cache: KVCache, layer_idx: int, commit: bool,
                  kernels: FusedKernels = EAGER) -> torch.Tensor:
    """One Wan block on x [B, L, dim]; the same contract as ``WanBlock.forward``."""
    heads = fp.heads
    qk_rot, qk, v = kernels.attention_inputs(p, m.shift1, m.scale1, x, cache.query_freqs, heads, fp.head_dim,
                                             fp.eps, fp.eps_norm, kernels.real_rope)
    # positions planned once per chunk, shared by all passes; the cache returns the whole context
    k_ctx, v_ctx = cache.update(layer_idx, qk_rot[:, :, heads:], v, k_raw=qk[:, :, heads:], commit=commit,
                                q_raw=qk[:, :, :heads])
    return kernels.attention_output(p, m, x, qk_rot[:, :, :heads], k_ctx, v_ctx, text_k, text_v, heads,
                                    fp.head_dim, fp.eps, fp.eps_norm)


def patch_embed(fp: FusedParams, x: torch.Tensor) -> torch.Tensor:
    """Latents [B, C, F, H, W] -> tokens [B, F/pt * H/ph * W/pw, dim], frame-major: the stride-equals-
    kernel Conv3d as one gather of the patches and one matmul (a CPU conv3d costs far more)."""
    b, c, f, h, w = x.shape
    pt, ph, pw = fp.patch
    patches = x.view(b, c, f // pt, pt, h // ph, ph, w // pw, pw)
    patches = patches.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, (f // pt) * (h // ph) * (w // pw), -1)
    return F.linear(patches, fp.w_patch, fp.b_patch)  # [B, L, dim]


def head_forward(fp: FusedParams, shift: torch.Tensor, scale_1p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The output head on x [B, L, dim] -> [B, L, out_dim * prod(patch)]."""
    return F.linear(norm_modulate(x, shift, scale_1p, fp.eps), fp.w_head, fp.b_head)
