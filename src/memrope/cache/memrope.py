"""``memrope``: sink + long/short-term EMA memory tokens + recent frames, positions by slot.

MemRoPE (Kim, Hu, Kuo, Beerel, arXiv 2603.12513). Once full, the cache of ``cache_size`` slots is

    [ sink (S) | long memory | short memory | recent (R) | current chunk (C) ]

and every slot is seen at its slot index as temporal RoPE position, so positions never leave
``[0, cache_size)``. When a chunk arrives, the oldest recent frames are evicted, reduced to a mean
and folded into both memories by exponential moving averages (``alpha_long``: identity;
``alpha_short``: recent dynamics) of unrotated keys (``ema.py``) and values.

Followed: YoungRaeKimm/MemRoPE@b89bf5b ``wan/modules/causal_model.py`` (``compression_method: ema``),
``pipeline/causal_inference.py``. Options and deviations from it, all deliberate:
- ``reduction="global"`` (reference): one mean vector per head and channel over all tokens of the
  evicted frames, broadcast to every position of the memory frame. ``"spatial"``: mean over
  frames only, so each position keeps its own memory.
- ``ema_dtype="float32"`` (default) keeps the accumulators in fp32: at alpha 0.01 a bf16
  accumulator (``"cache"``, reference) loses most of each update to rounding.
- ``faithful=True`` reproduces the reference's first eviction, where the frames in the slots that
  become memory (frames 3 and 4) are overwritten unfolded; by default they are folded too.
- ``memory``: the paper's ablation, ``both``, ``long``, ``short`` or ``none`` (sink + FIFO).
- ``ema_adaptive=True`` (with ``reduction="spatial"``; the ``memrope_adaptive`` preset) is the
  reference's adaptive mode, off in its shipped configs: the short memory's alpha varies per
  position with the evicted keys' motion (``ema.adaptive_alpha``), the long memory's stays uniform.
- ``sink_gap`` (not in the paper, 0 by default) puts the sink that many positions further back;
  the ``memrope_far_sink`` preset uses it to test why an attention sink at absolute positions keeps
  identity better on the toy world model (README, world benchmark).
- ``switch`` (the reference has no prompt switch; ``on_switch``): ``recache`` (default),
  ``reset`` or ``keep``, measured by ``world/switch_benchmark.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .ema import adaptive_alpha, ema_, reduce_evicted
from .plan import BY_SLOT, FRAME, LONG_MEMORY, SHORT_MEMORY, CacheGeometry, ChunkPlan, Clock, Slot, SwitchPlan
from .policy import CachePolicy, FrameReader, LayerKV, append_plan, slot_order_frames

MEMORY_MODES: dict[str, tuple[str, ...]] = {
    "both": (LONG_MEMORY, SHORT_MEMORY),
    "long": (LONG_MEMORY,),
    "short": (SHORT_MEMORY,),
    "none": (),
}
REDUCTIONS = ("global", "spatial")
EMA_DTYPES = ("float32", "cache")
SWITCHES = ("recache", "reset", "keep")


@dataclass(frozen=True)
class MemRoPEConfig:
    cache_size: int = 12  # slots attended, current chunk included (paper: 12)
    sink: int = 3
    alpha_long: float = 0.01
    alpha_short: float = 0.1
    memory: str = "both"
    reduction: str = "global"
    ema_dtype: str = "float32"
    faithful: bool = False
    ema_adaptive: bool = False  # the reference's per-position, motion-adaptive short memory
    sink_gap: int = 0  # temporal positions inserted after the sink (0: positions = slot index, the paper)
    switch: str = "recache"  # at a prompt change: recache recent frames / also reset memories / keep all

    def __post_init__(self) -> None:
        if self.memory not in MEMORY_MODES:
            raise ValueError(f"memrope: memory must be one of {sorted(MEMORY_MODES)}, got {self.memory!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"memrope: reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.ema_dtype not in EMA_DTYPES:
            raise ValueError(f"memrope: ema_dtype must be one of {EMA_DTYPES}, got {self.ema_dtype!r}")
        for name in ("alpha_long", "alpha_short"):
            a = getattr(self, name)
            if not 0.0 < a <= 1.0:
                raise ValueError(f"memrope: {name} must be in (0, 1], got {a}")
        if self.sink < 0:
            raise ValueError(f"memrope: sink must be >= 0 frames, got {self.sink}")
        if self.cache_size < 1:
            raise ValueError(f"memrope: cache_size must be >= 1, got {self.cache_size}")
        if self.sink_gap < 0:
            raise ValueError(f"memrope: sink_gap must be >= 0 positions, got {self.sink_gap}")
        if self.ema_adaptive and self.reduction != "spatial":
            raise ValueError("memrope: ema_adaptive needs per-position memory; set reduction=spatial")
        if self.switch not in SWITCHES:
            raise ValueError(f"memrope: switch must be one of {SWITCHES}, got {self.switch!r}")

    @property
    def memory_kinds(self) -> tuple[str, ...]:
        return MEMORY_MODES[self.memory]

    def alpha(self, kind: str) -> float:
        return self.alpha_long if kind == LONG_MEMORY else self.alpha_short


class MemRoPE(CachePolicy):
    name = "memrope"
    recaches_on_switch = True
    paper = "MemRoPE: evolving memory tokens + online RoPE indexing (Kim et al., arXiv 2603.12513)"
    source = "YoungRaeKimm/MemRoPE@b89bf5b wan/modules/causal_model.py, pipeline/causal_inference.py"
    switch_options = ("switch",)
    rotate_at_read = True
    positions = BY_SLOT

    def __init__(self, config: MemRoPEConfig | None = None):
        super().__init__(config or MemRoPEConfig())
        self._memory_slots = tuple(Slot(kind) for kind in self.config.memory_kinds)

    # ----------------------------------------------------------------- planning (Python only)
    def gapped_positions(self, shifts: Iterable[int], start: int = 0) -> tuple[int, ...]:
        """Positions of the slots at context indices ``start, start + 1, ...`` with these shifts: the
        slot index plus its shift (``BY_SLOT``), plus ``sink_gap`` after the sink once the cache is
        full (the diagnostic shows the sink far in the past, as an attention sink at absolute
        positions does late in a video)."""
        sink, gap = self.config.sink, self.config.sink_gap
        return tuple(i + shift + (gap if i >= sink else 0) for i, shift in enumerate(shifts, start))

    def recent_frames(self, chunk_frames: int) -> int:
        c = self.config
        return c.cache_size - c.sink - len(c.memory_kinds) - chunk_frames

    def check_geometry(self, geo: CacheGeometry) -> None:
        c = self.config
        if self.recent_frames(geo.chunk_frames) < 0:
            raise ValueError(
                f"memrope: cache_size ({c.cache_size}) must hold sink ({c.sink}) + "
                f"{len(c.memory_kinds)} memory slot(s) + one chunk ({geo.chunk_frames}); raise cache_size"
            )

    def capacity_frames(self, chunk_frames: int) -> int | None:
        return self.config.cache_size

    def plan(self, slots: tuple[Slot, ...], clock: Clock, n_frames: int) -> ChunkPlan:
        c = self.config
        n = len(slots)
        if n + n_frames <= c.cache_size:  # still filling: slot index == frame index
            return append_plan(self, slots, clock, n_frames)
        kinds = c.memory_kinds
        has_memory = n > c.sink and slots[c.sink].kind != FRAME  # memories sit right after the sink
        recent = self.recent_frames(n_frames)
        fifo_start = c.sink + (len(kinds) if has_memory else 0)
        evicted = tuple(range(fifo_start, n - recent))
        if not kinds:
            dropped = evicted
        elif c.faithful and not has_memory:  # reference: slots turning into memory are overwritten
            dropped = evicted[: len(kinds)]
        else:
            dropped = ()
        past = slots[: c.sink] + self._memory_slots + slots[n - recent:]
        sources = tuple(range(c.sink)) + (None,) * len(kinds) + tuple(range(n - recent, n))
        return ChunkPlan(
            chunk_index=clock.chunks,
            first_frame=clock.frames,
            n_frames=n_frames,
            past=past,
            sources=sources,
            past_pos=self.gapped_positions(s.shift for s in past),
            query_pos=tuple(p + clock.pos_shift for p in self.gapped_positions((0,) * n_frames, len(past))),
            evicted=evicted,
            dropped=dropped,
        )

    def on_switch(self, slots: tuple[Slot, ...], clock: Clock, cut: bool) -> SwitchPlan:
        """``recache`` keeps the sink and both memories (the video's identity) and re-encodes the recent
        frames under the new prompt in one pass, as LongLive recaches (memory tokens average frames that
        are gone: they cannot be re-encoded); ``reset`` also drops the memories (they restart at the next
        eviction); ``keep`` changes only the text."""
        if self.config.switch == "keep":
            return SwitchPlan(keep=tuple(range(len(slots))))
        sink = min(self.config.sink, len(slots))
        memories = tuple(i for i, s in enumerate(slots) if s.kind != FRAME)
        kept = tuple(range(sink)) + (memories if self.config.switch == "recache" else ())
        rest = [s for i, s in enumerate(slots) if i >= sink and s.kind == FRAME]
        return SwitchPlan(keep=kept, recache=tuple(s.frame_idx for s in rest))

    # ----------------------------------------------------------------- tensor work (once per chunk)
    def allocate_extra(self, geo: CacheGeometry) -> dict[str, torch.Tensor]:
        positions = 1 if self.config.reduction == "global" else geo.frame_tokens
        dtype = torch.float32 if self.config.ema_dtype == "float32" else geo.dtype
        shape = (geo.batch, positions, geo.heads, geo.head_dim)
        return {
            f"{kind}_{part}": torch.zeros(shape, dtype=dtype, device=geo.device)
            for kind in self.config.memory_kinds
            for part in ("k", "v")
        }

    @property
    def ring_storage(self) -> bool:
        """Keys can live rotated in a ring buffer (``ring.py``): global memories need only per-frame
        means, kept at commit; spatial ones the evicted frames themselves, un-rotated when folded."""
        return True

    @property
    def ring_fold(self) -> str:
        return "means" if self.config.reduction == "global" else "frames"

    def before_compaction(self, layer: LayerKV, plan: ChunkPlan, geo: CacheGeometry) -> None:
        self.fold_frames(layer, plan, slot_order_frames(layer, geo.frame_tokens))  # evicted slots are consecutive

    def fold_means(self, layer: LayerKV, plan: ChunkPlan, k_means: torch.Tensor, v_means: torch.Tensor) -> None:
        if not self.config.memory_kinds:
            return
        acc_dtype = layer.extra[f"{self.config.memory_kinds[0]}_k"].dtype
        self._fold(layer, plan, k_means.to(acc_dtype), v_means.to(acc_dtype))  # [B, 1, H, D] each

    def fold_frames(self, layer: LayerKV, plan: ChunkPlan, frames: FrameReader) -> None:
        folded = [i for i in plan.evicted if i not in plan.dropped]
        if not folded or not self.config.memory_kinds:
            return
        acc_dtype = layer.extra[f"{self.config.memory_kinds[0]}_k"].dtype
        # [B, m, ft, H, D] -> [B, 1 or ft, H, D]
        e_k, e_v = (reduce_evicted(t.to(acc_dtype), self.config.reduction) for t in frames(folded))
        self._fold(layer, plan, e_k, e_v)

    def _fold(self, layer: LayerKV, plan: ChunkPlan, e_k: torch.Tensor, e_v: torch.Tensor) -> None:
        # The FIFO starts right after the sink only while no memory slot exists: first eviction.
        first = plan.evicted[0] == self.config.sink
        for kind in self.config.memory_kinds:
            mem_k, mem_v = layer.extra[f"{kind}_k"], layer.extra[f"{kind}_v"]
            if first:
                mem_k.copy_(e_k)
                mem_v.copy_(e_v)
                continue
            alpha = self.config.alpha(kind)
            if self.config.ema_adaptive and kind == SHORT_MEMORY:
                alpha = adaptive_alpha(e_k, mem_k, alpha)  # from the keys before they move
            ema_(mem_k, e_k, alpha)
            ema_(mem_v, e_v, alpha)

    def memory_value(self, layer: LayerKV, kind: str, index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        return layer.extra[f"{kind}_k"], layer.extra[f"{kind}_v"]

    def after_compaction(self, layer: LayerKV, plan: ChunkPlan, geo: CacheGeometry) -> None:
        if not plan.evicted:
            return
        ft = geo.frame_tokens
        for slot_idx, slot in enumerate(plan.past):
            if slot.kind == FRAME:
                continue
            for part, dst in (("k", layer.k_raw), ("v", layer.v)):
                mem = layer.extra[f"{slot.kind}_{part}"]  # [B, 1 or ft, H, D]
                dst[:, slot_idx * ft : (slot_idx + 1) * ft] = mem.expand(-1, ft, -1, -1)

