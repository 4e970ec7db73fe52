"""``deep_forcing``: Deep Sink + Participative Compression, as the authors released them.

Deep Forcing (Yi et al., arXiv 2512.05081), training-free on Self-Forcing. The official repository
(cvlab-kaist/DeepForcing) is a placeholder; the authors' code release is the commit
Nizben/Spectral_C@ea9961a (later commits of that repository are not theirs), followed here:
``wan/modules/causal_model.py`` (Participative Compression), ``wan/modules/causal_model_DS.py``
(Deep Sink only, ``--is_ds_only``), ``utils/wan_wrapper.py`` (budget 16, recent 4),
``configs/self_forcing_dmd/self_forcing_dmd_sink10.yaml`` (window 21, sink 10; ``PC_topc_max_reuse``
7 in ``CausalWanModel``). Keys are stored rotated at their absolute frame index, as in Self-Forcing;
positions therefore grow with the video and are refused past the RoPE table, as in the release.

- Deep Sink: the first ``sink`` frames are never evicted. Their keys are moved in time (temporal
  channel pairs only) so that they sit just before the rest: in the compression mode to start at
  ``t - budget`` whenever a chunk starting at frame t compresses, and only then; in the Deep-Sink-
  only mode (``compression=false``, preset ``deep_forcing_sink_only`` with the recommended sink 14)
  to start at ``t - window`` whenever a chunk evicts, i.e. every chunk once the window is full.
- Participative Compression: a chunk compresses only when the previous cache plus the chunk would
  exceed ``window`` frames, at its first pass (first at chunk 7, then every other chunk: the cache
  alternates 16 and 19 frames, the chunk included). Candidates are the tokens between the sink and
  the last ``recent`` frames of [cache, chunk], i.e. 1 old frame and the chunk's 3. Each layer scores
  them with the sum over heads and channels of q.k / (sqrt(D) H), q summed over the last ``recent``
  frames' worth of rotated queries of [the previous commit pass, this pass] (the last clean frame
  and the chunk's noisy frames at t = 1000), keys as stored; a token selected ``max_reuse`` times is
  no longer eligible. The top-C = budget - sink - recent frames' worth are kept in cache order at
  their own absolute positions (``PER_TOKEN``); everything else between sink and recent leaves.

Deviations, and why:
- The first sink move of the release is hard-wired to ``window - budget`` frames (``21 - capacity
  // 1560``); the general formula used here (``sink_offset``) gives the same positions for any window.
- If fewer than top-C tokens are eligible (unreachable with the defaults: every compression sees two
  chunks of never-selected frames), the release keeps fewer and pads the cache with zero keys; here
  the best ineligible tokens fill the gap.
- ``recent`` must lie between one and two chunks: the release's query FIFO would otherwise reach
  passes before the previous commit. Its ``max`` score fusion (off in the release) is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..rope import Rope3D, apply_rope
from .plan import PER_TOKEN, SELECTED, CacheGeometry, ChunkPlan, Clock, Slot
from .policy import CachePolicy, LayerKV, append_plan, new_positions


@dataclass(frozen=True)
class DeepForcingConfig:
    window: int = 21  # frames attended, current chunk included (Self-Forcing's local_attn_size)
    sink: int = 10
    budget: int = 16  # frames kept by a compression, the chunk included (PC_capacity)
    recent: int = 4  # last frames of [cache, chunk] always kept (PC_window)
    max_reuse: int = 7  # a token selected this many times is excluded (0: no limit)
    compression: bool = True  # False: Deep Sink only (is_ds_only)

    def __post_init__(self) -> None:
        if min(self.sink, self.recent, self.max_reuse) < 0:
            raise ValueError("deep_forcing: sink, recent and max_reuse must be >= 0")
        if self.compression and self.top_c < 0:
            raise ValueError(f"deep_forcing: budget ({self.budget}) must be >= sink ({self.sink}) + recent "
                             f"({self.recent}); raise budget")
        if self.compression and self.budget > self.window:
            raise ValueError(f"deep_forcing: budget ({self.budget}) must not exceed window ({self.window})")

    @property
    def top_c(self) -> int:
        """Frames' worth of tokens selected between sink and recent."""
        return self.budget - self.sink - self.recent


def first_overflow_frame(window: int, chunk_frames: int) -> int:
    """First frame of the first chunk that would overflow a ``window`` filled chunk by chunk."""
    return chunk_frames * ((window - chunk_frames) // chunk_frames + 1)


class DeepForcing(CachePolicy):
    name = "deep_forcing"
    paper = "Deep Forcing: Deep Sink + Participative Compression (Yi et al., arXiv 2512.05081)"
    source = ("Nizben/Spectral_C@ea9961a (the authors' code release) wan/modules/causal_model.py, "
              "wan/modules/causal_model_DS.py, utils/wan_wrapper.py")

    def __init__(self, config: DeepForcingConfig | None = None):
        super().__init__(config or DeepForcingConfig())

    def check_geometry(self, geo: CacheGeometry) -> None:
        c, f = self.config, geo.chunk_frames
        if c.window - c.sink < f:
            raise ValueError(f"deep_forcing: window - sink ({c.window} - {c.sink}) must hold one chunk ({f} frames)")
        if c.compression and not f <= c.recent <= 2 * f:
            raise ValueError(f"deep_forcing: recent ({c.recent}) must lie between one and two chunks ({f}, {2 * f})")

    def capacity_frames(self, chunk_frames: int) -> int | None:
        return self.config.window

    def uses_slot_layout(self) -> bool:
        """Only the compression's hooks (queries kept, tokens gathered) work on the slot-order layout;
        the Deep-Sink-only mode keeps whole frames and moves its sink in time, which the ring buffer
        does in place (``ring.py``)."""
        return self.config.compression

    def keeps_commit_state(self) -> bool:
        return self.config.compression  # the last commit's scoring queries

    def position_of(self, index: int, slot: Slot) -> int:
        return PER_TOKEN if slot.kind == SELECTED else super().position_of(index, slot)

    def sink_offset(self, chunk_frames: int) -> int:
        """Where the release's sink ends up relative to its formula: window - first overflow frame."""
        return self.config.window - first_overflow_frame(self.config.window, chunk_frames)

    def plan(self, slots: tuple[Slot, ...], clock: Clock, n_frames: int) -> ChunkPlan:
        c = self.config
        n = len(slots)
        if n + n_frames <= c.window:
            return append_plan(self, slots, clock, n_frames)
        t = clock.frames
        start = t - (c.budget if c.compression else c.window) + self.sink_offset(n_frames)
        sink = tuple(Slot(s.kind, s.frame_idx, start + j - s.frame_idx) for j, s in enumerate(slots[:c.sink]))
        if c.compression:
            old = c.recent - n_frames  # old frames among the last `recent` of [cache, chunk]
            evicted = tuple(range(c.sink, n - old))
            past = sink + (Slot(SELECTED),) * c.top_c + slots[n - old:]
            sources = tuple(range(c.sink)) + (None,) * c.top_c + tuple(range(n - old, n))
        else:
            evicted = tuple(range(c.sink, n + n_frames - c.window + c.sink))
            sources = tuple(i for i in range(n) if i not in evicted)
            past = sink + tuple(slots[i] for i in sources[c.sink:])
        return ChunkPlan(
            chunk_index=clock.chunks, first_frame=t, n_frames=n_frames, past=past, sources=sources,
            past_pos=tuple(self.position_of(i, s) for i, s in enumerate(past)),
            query_pos=new_positions(self, len(past), clock, n_frames),
            evicted=evicted, dropped=evicted, deferred=c.compression,
        )

    # ----------------------------------------------------------------- tensor work
    def allocate_extra(self, geo: CacheGeometry) -> dict[str, torch.Tensor]:
        c, ft = self.config, geo.frame_tokens
        if not c.compression:
            return {}
        extra = {"reuse": torch.zeros((geo.batch, c.top_c * ft), dtype=torch.long, device=geo.device)}
        if c.recent > geo.chunk_frames:  # the previous commit pass's last queries, unrotated
            shape = (geo.batch, (c.recent - geo.chunk_frames) * ft, geo.heads, geo.head_dim)
            extra["q_prev"] = torch.zeros(shape, dtype=geo.dtype, device=geo.device)
        return extra

    def after_commit(self, layer: LayerKV, plan: ChunkPlan, geo: CacheGeometry, q_raw: torch.Tensor) -> None:
        if "q_prev" in layer.extra and q_raw is not None:
            keep = layer.extra["q_prev"].shape[1]
            layer.extra["q_prev"].copy_(q_raw[:, -keep:])

    def scores(self, layer: LayerKV, plan: ChunkPlan, geo: CacheGeometry, rope: Rope3D,
               q_raw: torch.Tensor) -> torch.Tensor:
        """Summed logits of the scoring queries for every candidate token: [B, Nc]."""
        c, ft = self.config, geo.frame_tokens
        cand = layer.k[:, c.sink * ft:(plan.evicted[-1] + 1) * ft]  # [B, Nc, H, D], rotated as stored
        device = cand.device
        queries = [apply_rope(q_raw, rope.freqs(torch.tensor(plan.query_pos, device=device), geo.grid))]
        if "q_prev" in layer.extra:
            n_prev = layer.extra["q_prev"].shape[1] // ft
            prev = torch.arange(plan.first_frame - n_prev, plan.first_frame, device=device)
            queries.append(apply_rope(layer.extra["q_prev"], rope.freqs(prev, geo.grid)))
        q_sum = sum(q.float().sum(dim=1) for q in queries)  # [B, H, D]: sum over queries first
        return torch.einsum("bhd,bkhd->bk", q_sum, cand.float()) / (geo.head_dim**0.5 * geo.heads)

    def deferred_compaction(self, layer: LayerKV, plan: ChunkPlan, geo: CacheGeometry, rope: Rope3D,
                            q_raw: torch.Tensor) -> None:
        if q_raw is None:
            raise ValueError("deep_forcing needs the chunk's unrotated queries to rank tokens")
        c, ft = self.config, geo.frame_tokens
        base, end = c.sink * ft, (plan.evicted[-1] + 1) * ft  # candidate tokens [base, end)
        score = self.scores(layer, plan, geo, rope, q_raw)  # [B, Nc]
        reuse = layer.extra["reuse"]  # selections of the tokens in the top-C slots (0 for frames)
        counts = torch.cat([reuse, reuse.new_zeros(score.shape[0], score.shape[1] - reuse.shape[1])], dim=1)
        if c.max_reuse:
            score = score.masked_fill(counts >= c.max_reuse, float("-inf"))
        idx = score.topk(c.top_c * ft, dim=1).indices.sort(dim=1).values  # [B, keep], cache order
        gather = idx[:, :, None, None].expand(-1, -1, *layer.k.shape[2:])
        sel_k = torch.gather(layer.k[:, base:end], 1, gather)
        sel_v = torch.gather(layer.v[:, base:end], 1, gather)
        old = plan.n_past - c.sink - c.top_c  # old frames kept as recent: they move, unchanged
        rec = slice(end, end + old * ft)
        rec_k, rec_v = layer.k[:, rec].clone(), layer.v[:, rec].clone()
        top, new_rec = slice(base, base + c.top_c * ft), slice(base + c.top_c * ft, plan.n_past * ft)
        layer.k[:, top], layer.v[:, top] = sel_k, sel_v
        layer.k[:, new_rec], layer.v[:, new_rec] = rec_k, rec_v
        reuse.copy_(counts.gather(1, idx) + 1)
