"""Shared mechanism of the window policies: a fixed number of frames, a protected sink.

``window`` counts the frames attended, the chunk being generated included; the first ``sink``
frames are never evicted; the oldest unprotected frames leave first. Whether a frame is seen at
its own index (sliding window, attention sink) or at its index in the window (infinity-RoPE,
LongLive's infinite attention) is the policy's ``position_of``.

On a prompt change the LongLive-family policies follow LongLive's KV recache
(NVlabs/LongLive@2462895 ``pipeline/interactive_causal_inference.py`` ``_recache_after_switch``, with
the cache update of ``wan/modules/causal_model.py``, ``global_sink: true`` as in its interactive
config): one t=0 pass over the clean latents of the last min(window, t) frames under the new prompt,
every query attending the whole window with no causal mask, the sink slots write-protected. In
slot terms: once the video is longer than the window the sink stays (old prompt) and every other
cached frame is re-encoded in that one pass, attending the sink and each other; while it is not
(t <= window) the pass starts at frame 0, where the released code does not protect the sink, so
every cached frame, the sink's included, is re-encoded. (The released pass also computes queries
for the frames between the sink and the last window - sink frames, whose keys it never writes; they
change nothing and are not computed here.)
"""

from __future__ import annotations

from .plan import ChunkPlan, Clock, Slot, SwitchPlan
from .policy import CachePolicy, append_plan, new_positions


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
    return ChunkPlan(
        chunk_index=clock.chunks,
        first_frame=clock.frames,
        n_frames=n_frames,
        past=past,
        sources=kept,
        past_pos=tuple(policy.position_of(i, s) for i, s in enumerate(past)),
        query_pos=new_positions(policy, len(past), clock, n_frames),
        evicted=evicted,
        dropped=evicted,
    )


def recache_switch(slots: tuple[Slot, ...], clock: Clock, sink: int, window: int) -> SwitchPlan:
    """LongLive KV recache (module docstring): keep the sink once the video is longer than the
    window, re-encode every other cached frame in one pass."""
    protected = min(sink, len(slots)) if clock.frames > window else 0
    return SwitchPlan(keep=tuple(range(protected)),
                      recache=tuple(s.frame_idx for s in slots[protected:]))
