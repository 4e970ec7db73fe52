"""Shared mechanism of the sliding-window and attention-sink policies.

Both keep a fixed number of frames (``window``, counting the chunk being generated), protect the
first ``sink`` frames, and evict the oldest unprotected frames; every frame keeps its absolute
RoPE position, so keys are stored rotated, as the base models store them.
"""

from __future__ import annotations

from .base import ChunkPlan, Clock, Slot, append_plan


def windowed_plan(slots: tuple[Slot, ...], clock: Clock, n_frames: int, window: int, sink: int) -> ChunkPlan:
    """Evict the oldest non-sink frames so that past + new chunk fit in ``window`` frames."""
    n = len(slots)
    overflow = n + n_frames - window
    if overflow <= 0:
        return append_plan(slots, clock, n_frames)
    protected = min(sink, n)
    evicted = tuple(range(protected, protected + overflow))
    kept = tuple(i for i in range(n) if i not in evicted)
    past = tuple(slots[i] for i in kept)
    return ChunkPlan(
        chunk_index=clock.chunks,
        first_frame=clock.frames,
        n_frames=n_frames,
        past=past,
        sources=kept,
        past_pos=tuple(s.frame_idx for s in past),
        query_pos=tuple(range(clock.frames, clock.frames + n_frames)),
        evicted=evicted,
        dropped=evicted,
    )
