"""Exponential moving averages of cached keys and values: MemRoPE's memory tokens and Reward
Forcing's EMA-Sink share these few formulas (the policies decide what is averaged into what).

Keys are always averaged *unrotated* (post-RMSNorm): averaging rotated keys would mix RoPE phases.
"""

from __future__ import annotations

import torch

ADAPTIVE_MIN, ADAPTIVE_MAX = 0.1, 5.0
"""MemRoPE's adaptive mode: the short memory's alpha per position spans [0.1, 5] x alpha_short,
linearly in the position's normalised motion (YoungRaeKimm/MemRoPE@b89bf5b
``wan/modules/causal_model.py``, ``ema_adaptive``)."""

MOTION_EPS = 1e-8
"""Added to the largest motion before normalising (same reference), so a motionless frame is 0/eps."""


def reduce_evicted(frames: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce evicted frames [B, m, ft, H, D] to one memory value.

    ``global``: mean over frames and tokens -> [B, 1, H, D]; ``spatial``: over frames -> [B, ft, H, D].
    """
    if reduction == "global":
        return frames.mean(dim=(1, 2)).unsqueeze(1)
    return frames.mean(dim=1)


def ema_(memory: torch.Tensor, value: torch.Tensor, alpha: float | torch.Tensor) -> None:
    """In place: memory <- alpha value + (1 - alpha) memory (``alpha`` a number or broadcastable)."""
    memory.lerp_(value, alpha)


def adaptive_alpha(evicted_k: torch.Tensor, memory_k: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-position alpha [B, ft, 1, 1] of MemRoPE's adaptive short memory: alpha (0.1 + 4.9 mu / max mu),
    mu(p) = mean over heads of ||evicted_k(p) - memory_k(p)|| (the key's motion at position p), both
    [B, ft, H, D]; the same alpha serves keys and values."""
    motion = (evicted_k - memory_k).norm(dim=-1).mean(dim=-1)  # [B, ft]
    scaled = motion / (motion.amax(dim=-1, keepdim=True) + MOTION_EPS)  # [0, 1]
    return (alpha * (ADAPTIVE_MIN + scaled * (ADAPTIVE_MAX - ADAPTIVE_MIN)))[..., None, None]
