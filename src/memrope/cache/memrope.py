"""``memrope``: sink + long/short-term EMA memory tokens + recent frames, positions by slot.

MemRoPE (Kim, Hu, Kuo, Beerel, arXiv 2603.12513). Once full, the cache of ``cache_size`` slots is

    [ sink (S) | long memory | short memory | recent (R) | current chunk (C) ]

and every slot is seen at its slot index as temporal RoPE position, so positions never leave
``[0, cache_size)`` however long the video runs. When a chunk arrives, the oldest frames of the
recent FIFO are evicted, reduced to a mean and folded into both memories by exponential moving
averages (slow ``alpha_long``: identity; fast ``alpha_short``: recent dynamics). Keys are kept
unrotated (post-RMSNorm) so that averaging them is meaningful - averaging rotated keys would mix
phases - and RoPE is applied when the chunk is planned.

Options and deviations from the reference code, all deliberate:
- ``reduction="global"`` (reference): one mean vector per head and channel over all tokens of the
  evicted frames, broadcast to every position of the memory frame. ``"spatial"``: mean over
  frames only, so each position keeps its own memory.
- ``ema_dtype="float32"`` (default) keeps the accumulators in fp32: at alpha 0.01 a bf16
  accumulator (``"cache"``, reference) loses most of each update to rounding.
- ``faithful=True`` reproduces the reference's first eviction, where the frames in the slots that
  become memory (frames 3 and 4 by default) are overwritten without entering memory. By default
  they are folded into the first memory value together with the other evicted frames.
- ``memory`` selects the paper's ablation: ``both``, ``long``, ``short`` or ``none`` (plain sink +
  FIFO eviction at the same cache size, positions still by slot).
- ``sink_gap`` (not in the paper, 0 by default) puts the sink that many positions further back;
  the ``memrope_far_sink`` preset uses it to test why an attention sink at absolute positions keeps
  identity better on the toy world model (README, world benchmark).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .plan import (
    BY_SLOT,
    FRAME,
    LONG_MEMORY,
    SHORT_MEMORY,
    CacheGeometry,
    ChunkPlan,
    Clock,
    Slot,
    SwitchPlan,
)
from .policy import CachePolicy, LayerKV, append_plan

MEMORY_MODES: dict[str, tuple[str, ...]] = {
    "both": (LONG_MEMORY, SHORT_MEMORY),
    "long": (LONG_MEMORY,),
    "short": (SHORT_MEMORY,),
    "none": (),
}
REDUCTIONS = ("global", "spatial")
EMA_DTYPES = ("float32", "cache")


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
    sink_gap: int = 0  # temporal positions inserted after the sink (0: positions = slot index, the paper)

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

    @property
    def memory_kinds(self) -> tuple[str, ...]:
        return MEMORY_MODES[self.memory]

    def alpha(self, kind: str) -> float:
        return self.alpha_long if kind == LONG_MEMORY else self.alpha_short


class MemRoPE(CachePolicy):
    name = "memrope"
    recaches_on_switch = True
    paper = "MemRoPE: evolving memory tokens + online RoPE indexing (Kim et al., arXiv 2603.12513)"
    rotate_at_read = True
    positions = BY_SLOT

    def __init__(self, config: MemRoPEConfig | None = None):
        super().__init__(config or MemRoPEConfig())
        self._memory_slots = tuple(Slot(kind) for kind in self.config.memory_kinds)

    # ----------------------------------------------------------------- planning (Python only)
    def gapped_positions(self, shifts: Iterable[int], start: int = 0) -> tuple[int, ...]:
        """Positions of the slots at context indices ``start, start + 1, ...`` with these position
        shifts: the slot index plus its shift (``BY_SLOT``), plus ``sink_gap`` after the sink once
        the cache is full (while it fills, the timeline is the plain one). ``sink_gap`` is a
        diagnostic that shows the sink to the model as far in the past, as an attention sink at
        absolute positions does late in a video, while the rest keeps MemRoPE's bounded positions
        (at most cache_size + sink_gap)."""
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
            query_pos=self.gapped_positions((clock.pos_shift,) * n_frames, start=len(past)),
            evicted=evicted,
            dropped=dropped,
            new_shift=clock.pos_shift,
        )

    def on_switch(self, slots: tuple[Slot, ...], clock: Clock, cut: bool) -> SwitchPlan:
        """Keep the sink and both memories (the video's identity), re-encode the recent frames
        under the new prompt (LongLive's recache, which makes the switch take hold at once).
        Memory tokens are averages of many frames and change slowly by design; re-encoding them
        is impossible (their source frames are gone) and resetting them would discard identity."""
        fixed = self.config.sink + sum(1 for s in slots if s.kind != FRAME)
        fixed = min(fixed, len(slots))
        return SwitchPlan(keep=tuple(range(fixed)), recache=tuple(s.frame_idx for s in slots[fixed:]))

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
        """Global memories need only per-frame means, so the keys can live rotated in a ring buffer
        (``ring.py``); spatial memories need every evicted token unrotated: slot order."""
        return self.config.reduction == "global"

    def before_compaction(self, layer: LayerKV, plan: ChunkPlan, geo: CacheGeometry) -> None:
        folded = [i for i in plan.evicted if i not in plan.dropped]
        if not folded or not self.config.memory_kinds:
            return
        ft = geo.frame_tokens
        lo, hi = folded[0], folded[-1] + 1  # evicted frames are contiguous slots
        for part, src in (("k", layer.k_raw), ("v", layer.v)):
            frames = src[:, lo * ft : hi * ft].unflatten(1, (hi - lo, ft))  # [B, m, ft, H, D]
            acc_dtype = layer.extra[f"{self.config.memory_kinds[0]}_{part}"].dtype
            self._fold(layer, plan, part, reduce_evicted(frames.to(acc_dtype), self.config.reduction))

    def fold_means(self, layer: LayerKV, plan: ChunkPlan, k_means: torch.Tensor, v_means: torch.Tensor) -> None:
        if not self.config.memory_kinds:
            return
        acc_dtype = layer.extra[f"{self.config.memory_kinds[0]}_k"].dtype
        for part, mean in (("k", k_means), ("v", v_means)):  # [B, 1, H, D]: the evicted frames' mean
            self._fold(layer, plan, part, mean if mean.dtype == acc_dtype else mean.to(acc_dtype))

    def _fold(self, layer: LayerKV, plan: ChunkPlan, part: str, e: torch.Tensor) -> None:
        # The FIFO starts right after the sink only while no memory slot exists: first eviction.
        first = plan.evicted[0] == self.config.sink
        for kind in self.config.memory_kinds:
            mem = layer.extra[f"{kind}_{part}"]
            if first:
                mem.copy_(e)
            else:
                mem.lerp_(e, self.config.alpha(kind))  # mem <- a e + (1 - a) mem

    def memory_value(self, layer: LayerKV, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
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


def reduce_evicted(frames: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce evicted frames [B, m, ft, H, D] to one memory value.

    ``global``: mean over frames and tokens -> [B, 1, H, D]; ``spatial``: over frames -> [B, ft, H, D].
    """
    if reduction == "global":
        return frames.mean(dim=(1, 2)).unsqueeze(1)
    return frames.mean(dim=1)
