"""``infinity_rope``: Block-Relativistic RoPE with KV Flush and RoPE Cut.

infinity-RoPE (Yesiltepe et al., arXiv 2511.20649). Keys are cached unrotated and the window is
re-indexed 0..n-1 for every chunk, with the query chunk at the end, so positions never exceed the
window; a 1-frame sink anchors the start. On a prompt change, *KV Flush* cuts the cache down to the
sink plus the last ``flush_keep`` frame(s) (the paper says one, its code keeps two) so the old
prompt stops steering; on a hard scene cut, *RoPE Cut* additionally shifts the new shot's temporal
indices by ``cut_gap`` so it reads as far away in time from what came before.

Re-indexing happens once per chunk rather than on every pass: positions do not change between the
passes of a chunk, so the result is the same at a fifth of the rotation work.
"""

from __future__ import annotations

from dataclasses import dataclass

from .plan import BY_SLOT, CacheGeometry, ChunkPlan, Clock, Slot, SwitchPlan
from .policy import CachePolicy
from .window import windowed_plan


@dataclass(frozen=True)
class InfinityRoPEConfig:
    window: int = 6  # frames attended, sink and current chunk included
    sink: int = 1
    flush_keep: int = 1  # frames kept after the sink by a KV flush
    cut_gap: int = 40  # temporal jump of a RoPE cut (the paper's example puts the new shot at ~45)

    def __post_init__(self) -> None:
        if self.sink < 0 or self.flush_keep < 0 or self.cut_gap < 0:
            raise ValueError("infinity_rope: sink, flush_keep and cut_gap must be >= 0")
        if self.window <= self.sink:
            raise ValueError(f"infinity_rope: window ({self.window}) must exceed sink ({self.sink})")


class InfinityRoPE(CachePolicy):
    name = "infinity_rope"
    paper = "infinity-RoPE: Block-Relativistic RoPE, KV Flush, RoPE Cut (Yesiltepe et al., arXiv 2511.20649)"
    rotate_at_read = True
    positions = BY_SLOT

    def __init__(self, config: InfinityRoPEConfig | None = None):
        super().__init__(config or InfinityRoPEConfig())

    def check_geometry(self, geo: CacheGeometry) -> None:
        c = self.config
        if c.window - c.sink < geo.chunk_frames:
            raise ValueError(f"infinity_rope: window - sink ({c.window} - {c.sink}) must hold one chunk "
                             f"({geo.chunk_frames} frames); raise window")
        if c.sink + c.flush_keep + geo.chunk_frames > c.window:
            raise ValueError("infinity_rope: sink + flush_keep + one chunk must fit in the window")

    def capacity_frames(self, chunk_frames: int) -> int | None:
        return self.config.window

    def plan(self, slots: tuple[Slot, ...], clock: Clock, n_frames: int) -> ChunkPlan:
        return windowed_plan(self, slots, clock, n_frames, self.config.window, self.config.sink)

    def on_switch(self, slots: tuple[Slot, ...], clock: Clock, cut: bool) -> SwitchPlan:
        n, sink = len(slots), min(self.config.sink, len(slots))
        tail = tuple(range(max(sink, n - self.config.flush_keep), n))
        return SwitchPlan(keep=tuple(range(sink)) + tail, pos_shift=self.config.cut_gap if cut else 0,
                          reset_shifts=True)
