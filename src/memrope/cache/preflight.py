"""Check a whole run's positions before any work: planning is pure Python, so walk it.

A policy with absolute positions (full, sliding window, sink) eventually asks for temporal
positions outside the model's RoPE table; finding that out at chunk 342 of a long run would waste
the run and leave a partial file. Walking the plans costs microseconds per chunk.
"""

from __future__ import annotations

from ..rope import Rope3D
from .plan import Clock, after_chunk
from .policy import CachePolicy


def preflight(policy: CachePolicy, rope: Rope3D, chunk_frames: int, num_chunks: int) -> int:
    """Largest temporal position of the run; raises ValueError if it leaves the RoPE table."""
    slots, clock, largest = (), Clock(), 0
    for _ in range(num_chunks):
        plan = policy.plan(slots, clock, chunk_frames)
        largest = max(largest, plan.max_frame_pos)
        if largest >= rope.max_positions:
            rope.check_positions(
                largest, f"{policy.name} would reach temporal position {largest} at chunk "
                f"{plan.chunk_index} of {num_chunks}; position")
        slots, clock = after_chunk(plan, clock)
    return largest
