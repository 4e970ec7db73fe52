"""``attention_sink``: the first ``sink`` frames forever plus the most recent frames.

StreamingLLM's attention sink as LongLive's frame sink (arXiv 2509.22622): 12 frames of which 3
are a sink, absolute positions. A static anchor: it cannot follow content that evolves, and the
positions of recent frames grow without bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from .plan import CacheGeometry, ChunkPlan, Clock, Slot, SwitchPlan
from .policy import CachePolicy
from .window import recache_switch, windowed_plan


@dataclass(frozen=True)
class AttentionSinkConfig:
    window: int = 12  # frames attended, sink and current chunk included
    sink: int = 3

    def __post_init__(self) -> None:
        if self.sink < 0:
            raise ValueError(f"attention_sink: sink must be >= 0 frames, got {self.sink}")
        if self.window <= self.sink:
            raise ValueError(
                f"attention_sink: window ({self.window}) must exceed sink ({self.sink}); raise window"
            )


class AttentionSink(CachePolicy):
    name = "attention_sink"
    recaches_on_switch = True
    paper = "frame sink of LongLive (Yang et al., arXiv 2509.22622); StreamingLLM (arXiv 2309.17453)"

    def __init__(self, config: AttentionSinkConfig | None = None):
        super().__init__(config or AttentionSinkConfig())

    def check_geometry(self, geo: CacheGeometry) -> None:
        c = self.config
        if c.window - c.sink < geo.chunk_frames:
            raise ValueError(
                f"attention_sink: window - sink ({c.window} - {c.sink}) must hold one chunk "
                f"({geo.chunk_frames} frames); raise window or lower sink"
            )

    def capacity_frames(self, chunk_frames: int) -> int | None:
        return self.config.window

    def plan(self, slots: tuple[Slot, ...], clock: Clock, n_frames: int) -> ChunkPlan:
        return windowed_plan(self, slots, clock, n_frames, self.config.window, self.config.sink)

    def on_switch(self, slots: tuple[Slot, ...], clock: Clock, cut: bool) -> SwitchPlan:
        return recache_switch(slots, sink=self.config.sink)
