"""``attention_sink``: the first ``sink`` frames forever plus the most recent frames.

StreamingLLM's attention sink as LongLive's frame sink (arXiv 2509.22622; NVlabs/LongLive@2462895
``wan/modules/causal_model.py``, ``configs/longlive_interactive_inference.yaml``): 12 frames of which
3 are a sink. A static anchor: it cannot follow content that evolves.

``rope`` chooses the temporal positions:

- ``absolute`` (default, LongLive's ``causal_model.py``): keys are rotated once at their frame index,
  so the positions of recent frames grow without bound (refused past the RoPE table);
- ``relative`` (LongLive's "infinite" attention, NVlabs/LongLive@2462895
  ``wan/modules/causal_model_infinity.py``, ``use_infinite_attention``; the preset
  ``attention_sink_infinite``, what other runtimes call sink + window + re-RoPE): keys are cached
  unrotated and the window [sink | recent | chunk] is rotated at 0..n-1 with the queries at its
  end, so positions never leave the window. The released code re-rotates the whole cache on every
  pass; positions do not change between the passes of a chunk, so here it happens once per chunk
  (same attention).

A prompt change is LongLive's KV recache (``window.py``) in both modes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .plan import ABSOLUTE, BY_SLOT, CacheGeometry, ChunkPlan, Clock, Slot, SwitchPlan
from .policy import CachePolicy
from .window import recache_switch, windowed_plan

ROPE_MODES = {"absolute": ABSOLUTE, "relative": BY_SLOT}


@dataclass(frozen=True)
class AttentionSinkConfig:
    window: int = 12  # frames attended, sink and current chunk included
    sink: int = 3
    rope: str = "absolute"

    def __post_init__(self) -> None:
        if self.sink < 0:
            raise ValueError(f"attention_sink: sink must be >= 0 frames, got {self.sink}")
        if self.window <= self.sink:
            raise ValueError(
                f"attention_sink: window ({self.window}) must exceed sink ({self.sink}); raise window"
            )
        if self.rope not in ROPE_MODES:
            raise ValueError(f"attention_sink: rope must be one of {sorted(ROPE_MODES)}, got {self.rope!r}")


class AttentionSink(CachePolicy):
    name = "attention_sink"
    recaches_on_switch = True
    paper = "frame sink of LongLive (Yang et al., arXiv 2509.22622); StreamingLLM (arXiv 2309.17453)"
    source = ("NVlabs/LongLive@2462895 wan/modules/causal_model.py (rope=relative: causal_model_infinity.py), "
              "pipeline/interactive_causal_inference.py (recache)")

    def __init__(self, config: AttentionSinkConfig | None = None):
        super().__init__(config or AttentionSinkConfig())
        if self.config.rope == "relative":  # instance attributes shadow the class defaults
            self.positions = BY_SLOT
            self.rotate_at_read = True

    def check_geometry(self, geo: CacheGeometry) -> None:
        c = self.config
        if c.window - c.sink < geo.chunk_frames:
            raise ValueError(
                f"{self.name}: window - sink ({c.window} - {c.sink}) must hold one chunk "
                f"({geo.chunk_frames} frames); raise window or lower sink"
            )

    def capacity_frames(self, chunk_frames: int) -> int | None:
        return self.config.window

    def plan(self, slots: tuple[Slot, ...], clock: Clock, n_frames: int) -> ChunkPlan:
        return windowed_plan(self, slots, clock, n_frames, self.config.window, self.config.sink)

    def on_switch(self, slots: tuple[Slot, ...], clock: Clock, cut: bool) -> SwitchPlan:
        return recache_switch(slots, clock, sink=self.config.sink, window=self.config.window)
