"""``deep_forcing``: Deep Sink + Participative Compression.

Deep Forcing (arXiv 2512.05081), training-free on Self-Forcing. Within a ``window`` of 21 frames
(the trained one) the first ``sink`` = 10 frames are kept forever (Deep Sink). When the window is
full, at the first denoising pass of the new chunk, each layer compresses its past to ``budget`` =
16 frames: sink + the ``recent`` = 4 newest frames + the top-C = budget - recent - sink candidate
*tokens* (2 frames' worth) from everything in between, ranked by the attention logits that recent
queries give them (Participative Compression). Everything is then re-aligned into one contiguous
timeline [sink | top-C | recent | chunk]: tokens keep their spatial RoPE, and their temporal phase
is shifted to their new place, so positions never exceed ``window - 1``.

Choices the paper leaves open, made here and documented:
- Scoring queries (``score_queries``): ``recent+current`` (default) sums the logits of the clean
  queries of the ``recent`` newest frames (kept from their commit pass) and of the new chunk's
  noisy queries at its first step; ``current`` uses the chunk's queries only. Queries are placed at
  the positions they would hold without compression, consistent with the candidates' keys.
- Head aggregation: logits are summed over heads (one ranking per layer, shared by its heads).
- Order: the selected tokens keep their temporal order and fill the top-C slots in that order.
- Positions: the timeline starts at 0 (the sink) instead of ending at the absolute time of the
  chunk; RoPE attention depends on position differences only, so this is the same attention
  without ever leaving the trained table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..rope import Rope3D, apply_rope, shift_time
from .plan import BY_SLOT, SELECTED, CacheGeometry, ChunkPlan, Clock, Slot
from .policy import CachePolicy, LayerKV, append_plan

SCORE_QUERIES = ("recent+current", "current")


@dataclass(frozen=True)
class DeepForcingConfig:
    window: int = 21  # frames attended, current chunk included
    sink: int = 10
    budget: int = 16  # past frames kept after a compression
    recent: int = 4
    score_queries: str = "recent+current"

    def __post_init__(self) -> None:
        if self.score_queries not in SCORE_QUERIES:
            raise ValueError(f"deep_forcing: score_queries must be one of {SCORE_QUERIES}")
        if min(self.sink, self.recent) < 0:
            raise ValueError("deep_forcing: sink and recent must be >= 0")
        if self.top_c < 0:
            raise ValueError(f"deep_forcing: budget ({self.budget}) must be >= sink ({self.sink}) + recent "
                             f"({self.recent}); raise budget")
        if self.budget >= self.window:
            raise ValueError(f"deep_forcing: budget ({self.budget}) must be below window ({self.window})")

    @property
    def top_c(self) -> int:
        """Frames' worth of tokens selected between sink and recent."""
        return self.budget - self.sink - self.recent


class DeepForcing(CachePolicy):
    name = "deep_forcing"
    paper = "Deep Forcing: Deep Sink + Participative Compression (arXiv 2512.05081)"
    positions = BY_SLOT  # keys stored rotated at their slot; moved tokens are phase-shifted

    def __init__(self, config: DeepForcingConfig | None = None):
        super().__init__(config or DeepForcingConfig())

    def check_geometry(self, geo: CacheGeometry) -> None:
        c = self.config
        if c.window - c.budget < geo.chunk_frames:
            raise ValueError(f"deep_forcing: window - budget ({c.window} - {c.budget}) must hold one chunk "
                             f"({geo.chunk_frames} frames); raise window or lower budget")

    def capacity_frames(self, chunk_frames: int) -> int | None:
        return self.config.window

    def allocate_extra(self, geo: CacheGeometry) -> dict[str, torch.Tensor]:
        if self.config.score_queries == "current" or self.config.recent == 0:
            return {}
        shape = (geo.batch, self.config.recent * geo.frame_tokens, geo.heads, geo.head_dim)
        return {"q_recent": torch.zeros(shape, dtype=geo.dtype, device=geo.device)}

    def plan(self, slots: tuple[Slot, ...], clock: Clock, n_frames: int) -> ChunkPlan:
        c = self.config
        n = len(slots)
        if n + n_frames <= c.window:
            return append_plan(self, slots, clock, n_frames)
        candidates = tuple(range(c.sink, n - c.recent))
        recent = tuple(range(n - c.recent, n))
        past = slots[: c.sink] + (Slot(SELECTED),) * c.top_c + tuple(slots[i] for i in recent)
        return ChunkPlan(
            chunk_index=clock.chunks, first_frame=clock.frames, n_frames=n_frames, past=past,
            sources=tuple(range(c.sink)) + (None,) * c.top_c + recent,
            past_pos=tuple(range(len(past))),
            query_pos=tuple(range(len(past), len(past) + n_frames)),
            evicted=candidates, deferred=True, new_shift=clock.pos_shift,
        )

    def after_commit(self, layer: LayerKV, plan: ChunkPlan, geo: CacheGeometry, q_raw: torch.Tensor) -> None:
        if "q_recent" not in layer.extra or q_raw is None:
            return
        keep = layer.extra["q_recent"].shape[1]
        merged = torch.cat([layer.extra["q_recent"], q_raw.to(layer.extra["q_recent"].dtype)], dim=1)
        layer.extra["q_recent"].copy_(merged[:, -keep:])  # FIFO of the newest frames' clean queries

    def scores(self, layer: LayerKV, plan: ChunkPlan, geo: CacheGeometry, rope: Rope3D,
               q_raw: torch.Tensor) -> torch.Tensor:
        """Summed logits q.k / sqrt(D) of the scoring queries for every candidate token: [B, Nc]."""
        c, ft = self.config, geo.frame_tokens
        n_old = plan.evicted[-1] + 1 + c.recent
        cand = layer.k[:, c.sink * ft:(n_old - c.recent) * ft]  # [B, Nc, H, D], rotated at old slots
        device = cand.device
        cur_pos = torch.arange(n_old, n_old + plan.n_frames, device=device)
        queries = [apply_rope(q_raw, rope.freqs(cur_pos, geo.grid))]
        if "q_recent" in layer.extra:
            rec_pos = torch.arange(n_old - c.recent, n_old, device=device)
            queries.append(apply_rope(layer.extra["q_recent"], rope.freqs(rec_pos, geo.grid)))
        q_sum = sum(q.float().sum(dim=1) for q in queries)  # [B, H, D]: sum over queries first
        return torch.einsum("bhd,bkhd->bk", q_sum, cand.float()) / geo.head_dim**0.5

    def deferred_compaction(self, layer: LayerKV, plan: ChunkPlan, geo: CacheGeometry, rope: Rope3D,
                            q_raw: torch.Tensor) -> None:
        c, ft = self.config, geo.frame_tokens
        if q_raw is None:
            raise ValueError("deep_forcing needs the chunk's unrotated queries to rank tokens")
        n_old = plan.evicted[-1] + 1 + c.recent
        keep = c.top_c * ft
        score = self.scores(layer, plan, geo, rope, q_raw)  # [B, Nc]
        idx = score.topk(keep, dim=1).indices.sort(dim=1).values  # [B, keep], temporal order
        old_slot = c.sink + idx // ft
        new_slot = c.sink + torch.arange(keep, device=idx.device) // ft
        gather = idx[:, :, None, None].expand(-1, -1, *layer.k.shape[2:])
        base = c.sink * ft
        sel_k = torch.gather(layer.k[:, base:(n_old - c.recent) * ft], 1, gather)
        sel_v = torch.gather(layer.v[:, base:(n_old - c.recent) * ft], 1, gather)
        sel_k = shift_time(sel_k, new_slot - old_slot, rope)  # [B, keep, H, D]
        rec = slice((n_old - c.recent) * ft, n_old * ft)
        rec_delta = torch.full((c.recent * ft,), (c.sink + c.top_c) - (n_old - c.recent), device=idx.device)
        rec_k = shift_time(layer.k[:, rec], rec_delta, rope)
        rec_v = layer.v[:, rec].clone()
        top = slice(base, base + keep)
        new_rec = slice(base + keep, base + keep + c.recent * ft)
        layer.k[:, top], layer.v[:, top] = sel_k, sel_v
        layer.k[:, new_rec], layer.v[:, new_rec] = rec_k, rec_v

