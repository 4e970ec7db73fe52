"""Shared mechanism of the window policies: a fixed number of frames, a protected sink.

``window`` counts the frames attended, the chunk being generated included; the first ``sink``
frames are never evicted; the oldest unprotected frames leave first. Whether a frame is seen at
its own index (sliding window, attention sink) or at its index in the window (infinity-RoPE) is
the policy's ``position_of``.

On a prompt change these policies follow LongLive's KV recache: the sink stays, every other
cached frame is re-encoded under the new prompt (a clean t=0 pass over its latents), so the cache
stops carrying the old prompt's cross-attention in its keys and values.
"""

from __future__ import annotations

from .plan import ChunkPlan, Clock, Slot, SwitchPlan
from .policy import CachePolicy, append_plan


def windowed_plan(policy: CachePolicy, slots: tuple[Slot, ...], clock: Clock, n_frames: int, window: int,
                  sink: int) -> ChunkPlan:
    """Evict the oldest non-sink frames so that past + new chunk fit in ``window`` frames."""
    n = len(slots)
    overflow = n + n_frames - window
    if overflow <= 0:
        return append_plan(policy, slots, clock, n_frames)
    protected = min(sink, n)
    evicted = tuple(range(protected, protected + overflow))
    kept = tuple(i for i in range(n) if i not in evicted)
    past = tuple(slots[i] for i in kept)
    new = [Slot("frame", clock.frames + j, clock.pos_shift) for j in range(n_frames)]
    return ChunkPlan(
        chunk_index=clock.chunks,
        first_frame=clock.frames,
        n_frames=n_frames,
        past=past,
        sources=kept,
        past_pos=tuple(policy.position_of(i, s) for i, s in enumerate(past)),
        query_pos=tuple(policy.position_of(len(past) + j, s) for j, s in enumerate(new)),
        evicted=evicted,
        dropped=evicted,
        new_shift=clock.pos_shift,
    )


def recache_switch(slots: tuple[Slot, ...], sink: int) -> SwitchPlan:
    """LongLive KV recache: keep the sink, re-encode every other cached frame in order."""
    protected = min(sink, len(slots))
    return SwitchPlan(keep=tuple(range(protected)),
                      recache=tuple(s.frame_idx for s in slots[protected:]))
