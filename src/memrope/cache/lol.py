"""``lol``: LoL's multi-head RoPE jitter on LongLive's frame sink.

LoL (Cui et al., "LoL: Longer than Longer, Scaling Video Generation to Hour", arXiv 2601.16914):
sink frames at absolute RoPE positions make long videos snap back to the sink ("sink collapse")
when RoPE's periodic phases re-align with the sink's and every head attends there at once. The
training-free fix perturbs the RoPE base frequency per head, so the heads' temporal phases stop
aligning together; the paper reports the best jitter strength near 0.8, applied to all heads, on a
LongLive-style sink + rolling window. **Only the paper was available** (its code is not released; no
copy was found): the exact distribution of the perturbation is not known here. This implementation
takes, per head h, the temporal base ``theta_h = theta (1 + jitter u_h)`` with ``u_h`` drawn
uniformly in [-1, 1] from ``seed`` (fixed per stream, shared by all layers: one table per chunk serves
every layer), spatial axes unchanged; everything else is ``attention_sink`` (window 12, sink 3,
absolute positions, LongLive's KV recache on a prompt change).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..rope import Rope3D, RopeFreqs
from .plan import CacheGeometry, ChunkPlan, Clock, Slot, SwitchPlan
from .policy import CachePolicy
from .window import recache_switch, windowed_plan


@dataclass(frozen=True)
class LoLConfig:
    window: int = 12  # frames attended, sink and current chunk included (LongLive's)
    sink: int = 3
    jitter: float = 0.8  # relative spread of the per-head temporal RoPE base
    seed: int = 0  # draws the per-head jitter

    def __post_init__(self) -> None:
        if self.sink < 0:
            raise ValueError(f"lol: sink must be >= 0 frames, got {self.sink}")
        if self.window <= self.sink:
            raise ValueError(f"lol: window ({self.window}) must exceed sink ({self.sink}); raise window")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"lol: jitter must be in [0, 1) so that every head's base stays > 0, got {self.jitter}")


class LoL(CachePolicy):
    name = "lol"
    recaches_on_switch = True
    paper = "LoL: multi-head RoPE jitter against sink collapse (Cui et al., arXiv 2601.16914)"
    source = "paper only (no code released); the frame sink as NVlabs/LongLive@2462895 wan/modules/causal_model.py"

    def __init__(self, config: LoLConfig | None = None):
        super().__init__(config or LoLConfig())

    def check_geometry(self, geo: CacheGeometry) -> None:
        c = self.config
        if c.window - c.sink < geo.chunk_frames:
            raise ValueError(f"lol: window - sink ({c.window} - {c.sink}) must hold one chunk "
                             f"({geo.chunk_frames} frames); raise window or lower sink")

    def capacity_frames(self, chunk_frames: int) -> int | None:
        return self.config.window

    def plan(self, slots: tuple[Slot, ...], clock: Clock, n_frames: int) -> ChunkPlan:
        return windowed_plan(self, slots, clock, n_frames, self.config.window, self.config.sink)

    def on_switch(self, slots: tuple[Slot, ...], clock: Clock, cut: bool) -> SwitchPlan:
        return recache_switch(slots, clock, sink=self.config.sink, window=self.config.window)

    def head_bases(self, theta: float, heads: int) -> torch.Tensor:
        """theta_h = theta (1 + jitter u_h), u_h ~ U(-1, 1) from ``seed``: float64 [heads]."""
        u = torch.rand(heads, generator=torch.Generator().manual_seed(self.config.seed), dtype=torch.float64)
        return theta * (1.0 + self.config.jitter * (2.0 * u - 1.0))

    def rope_freqs(self, rope: Rope3D, positions: torch.Tensor, geo: CacheGeometry) -> RopeFreqs:
        """The model's tables with the temporal pairs recomputed per head: cos/sin [tokens, heads, D/2]."""
        plain = rope.freqs(positions, geo.grid)  # [F * h * w, D/2]
        dt = rope.split[0]  # temporal channels; dt / 2 pairs
        exponents = torch.arange(0, dt, 2, dtype=torch.float64) / dt
        inv = 1.0 / self.head_bases(rope.theta, geo.heads)[:, None] ** exponents  # [H, dt/2]
        pos = positions.to("cpu", torch.float64).repeat_interleave(geo.frame_tokens)  # [tokens], frame-major
        angles = (pos[:, None, None] * inv[None]).to(plain.cos.device)  # [tokens, H, dt/2]
        cos = plain.cos[:, None, :].repeat(1, geo.heads, 1)  # [tokens, H, D/2]
        sin = plain.sin[:, None, :].repeat(1, geo.heads, 1)
        cos[..., : dt // 2], sin[..., : dt // 2] = angles.cos().float(), angles.sin().float()
        return RopeFreqs(cos=cos, sin=sin)
