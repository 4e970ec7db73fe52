"""``infinity_rope``: Block-Relativistic RoPE with KV Flush and RoPE Cut, as released.

infinity-RoPE (Yesiltepe et al., arXiv 2511.20649), following yesiltepe-hidir/infinity-rope@63d7b84
``wan/modules/causal_model.py`` (``block_relativistic_rope``, ``rope_cut``) and
``pipeline/causal_inference.py`` (``kv_flush``), ``configs/self_forcing_dmd.yaml`` (window 6, sink 1):

- keys are cached unrotated and the window [sink | recent | chunk] is rotated at 0..n-1 with the
  queries at its end, so positions never exceed the window; the sink frame is rotated once at 0;
- every prompt change is a *KV Flush*: the cross-attention is rebuilt for the new prompt and the
  cache cut down to the sink plus the last ``flush_keep`` = 2 frames (the paper says one; the
  preset ``infinity_rope_paper_flush`` keeps one);
- a hard scene cut (``#``) adds a *RoPE Cut* to the flush, for the first chunk after it only: the
  kept frames sit at 0..k-1 and the new chunk, queries and keys, at ``cut_position`` = 45, 46, 47
  (``rope_cut``'s ``transition_from``), so the new shot reads as far away in time; the chunk after it
  is re-indexed 0..n-1 as usual.

Deviations, and why:

- Re-indexing happens once per chunk rather than on every pass: positions do not change between
  the passes of a chunk, so the attention is the same at a fifth of the rotation work.
- A flush before the window is full keeps the frames that exist: the released ``kv_flush`` copies
  the last two slots of the whole buffer, which then hold no frame yet (zeros).
- The cut's block is the chunk (``rope_cut`` hard-codes 3 frames, the released chunk size).
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
    flush_keep: int = 2  # frames kept after the sink by a KV flush (released code; the paper says 1)
    cut_position: int = 45  # first temporal index of the chunk after a RoPE cut (rope_cut's transition_from)

    def __post_init__(self) -> None:
        if self.sink < 0 or self.flush_keep < 0:
            raise ValueError("infinity_rope: sink and flush_keep must be >= 0")
        if self.window <= self.sink:
            raise ValueError(f"infinity_rope: window ({self.window}) must exceed sink ({self.sink})")
        if self.cut_position <= self.sink + self.flush_keep:
            raise ValueError(f"infinity_rope: cut_position ({self.cut_position}) must lie after the kept frames "
                             f"(sink + flush_keep = {self.sink + self.flush_keep})")


class InfinityRoPE(CachePolicy):
    name = "infinity_rope"
    paper = "infinity-RoPE: Block-Relativistic RoPE, KV Flush, RoPE Cut (Yesiltepe et al., arXiv 2511.20649)"
    source = ("yesiltepe-hidir/infinity-rope@63d7b84 wan/modules/causal_model.py, pipeline/causal_inference.py, "
              "configs/self_forcing_dmd.yaml")
    rotate_at_read = True
    positions = BY_SLOT
    switch_options = ("flush_keep", "cut_position")

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
        """KV Flush; with a cut, the next chunk's queries start at ``cut_position`` (a one-chunk offset)."""
        n, sink = len(slots), min(self.config.sink, len(slots))
        keep = tuple(range(sink)) + tuple(range(max(sink, n - self.config.flush_keep), n))
        return SwitchPlan(keep=keep, pos_shift=self.config.cut_position - len(keep) if cut else 0)
