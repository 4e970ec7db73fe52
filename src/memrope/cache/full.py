"""``full``: attend to every frame ever generated, at its absolute position.

The unbounded reference every other policy is checked against: this is what the base models do
inside their training window. Memory and time per chunk grow with the video, and positions leave
the RoPE table after ``ROPE_MAX_POSITIONS`` frames (~256 s for Wan), which raises an error.
"""

from __future__ import annotations

from dataclasses import dataclass

from .plan import ChunkPlan, Clock, Slot
from .policy import CachePolicy, append_plan


@dataclass(frozen=True)
class FullConfig:
    """No options: the full cache keeps everything."""


class FullCache(CachePolicy):
    name = "full"
    paper = "causal attention over all past frames (Self-Forcing, arXiv 2506.08009, inside its window)"
    source = "guandeh17/Self-Forcing@33593df wan/modules/causal_model.py (local_attn_size -1)"

    def __init__(self, config: FullConfig | None = None):
        super().__init__(config or FullConfig())

    def capacity_frames(self, chunk_frames: int) -> int | None:
        return None

    def plan(self, slots: tuple[Slot, ...], clock: Clock, n_frames: int) -> ChunkPlan:
        return append_plan(self, slots, clock, n_frames)
