"""``sliding_window``: the last ``window`` frames at absolute positions (Self-Forcing rolling).

Self-Forcing (arXiv 2506.08009) with ``local_attn_size`` set rolls a fixed window over the stream.
Memory is constant, but the beginning of the video is forgotten (identity drift) and absolute
positions keep growing past anything the model was trained on. Self-Forcing has no prompt switch;
this policy answers one with LongLive's KV recache without a sink (``window.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .plan import CacheGeometry, ChunkPlan, Clock, Slot, SwitchPlan
from .policy import CachePolicy
from .window import recache_switch, windowed_plan


@dataclass(frozen=True)
class SlidingWindowConfig:
    window: int = 12  # frames attended, the current chunk included

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"sliding_window: window must be >= 1 frame, got {self.window}")


class SlidingWindow(CachePolicy):
    name = "sliding_window"
    recaches_on_switch = True
    paper = "Self-Forcing rolling KV cache (Huang et al., arXiv 2506.08009)"
    source = ("guandeh17/Self-Forcing@33593df wan/modules/causal_model.py (local_attn_size); prompt switch: "
              "LongLive's KV recache with no sink (window.py)")

    def __init__(self, config: SlidingWindowConfig | None = None):
        super().__init__(config or SlidingWindowConfig())

    def check_geometry(self, geo: CacheGeometry) -> None:
        if self.config.window < geo.chunk_frames:
            raise ValueError(
                f"sliding_window: window ({self.config.window}) must hold at least one chunk "
                f"({geo.chunk_frames} frames); raise window"
            )

    def capacity_frames(self, chunk_frames: int) -> int | None:
        return self.config.window

    def plan(self, slots: tuple[Slot, ...], clock: Clock, n_frames: int) -> ChunkPlan:
        return windowed_plan(self, slots, clock, n_frames, self.config.window, sink=0)

    def on_switch(self, slots: tuple[Slot, ...], clock: Clock, cut: bool) -> SwitchPlan:
        return recache_switch(slots, clock, sink=0, window=self.config.window)
