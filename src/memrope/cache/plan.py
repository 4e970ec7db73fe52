"""What a cache holds and what a policy decides, in plain Python: slots, geometry, plans, the clock.

A *policy* decides, once per chunk and with Python integers only, which past frames the new chunk
attends to and at which temporal RoPE position (``frame_pos``) each of them is seen. These types
carry that decision; nothing here touches a tensor, so planning never syncs with a device.

Two words never mix: ``frame_idx`` is a frame's absolute index in the stream (unbounded),
``frame_pos`` the temporal RoPE coordinate a policy gives it (bounded for bounded policies).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FRAME = "frame"
LONG_MEMORY = "long"
SHORT_MEMORY = "short"
SELECTED = "selected"  # tokens picked from several frames (Deep Forcing's top-C)
EMA_SINK = "ema_sink"  # a sink frame that evicted frames are averaged into (Reward Forcing's EMA-Sink)
SLOT_KINDS = (FRAME, LONG_MEMORY, SHORT_MEMORY, SELECTED, EMA_SINK)
ABSOLUTE = "absolute"  # a frame is seen at its own index, as the base models do
BY_SLOT = "slot"  # a frame is seen at its index in the context: positions stay bounded
PER_TOKEN = -1
"""``past_pos`` of a slot whose tokens keep positions of their own (Deep Forcing's top-C tokens keep
the positions of the frames they were picked from): no single position describes the slot."""


@dataclass(frozen=True)
class Slot:
    """What one cache slot holds: a clean frame (with its ``frame_idx``), a memory token or
    selected tokens. ``shift`` is a temporal offset added to the slot's position (Deep Forcing's
    phase-shifted sink)."""

    kind: str
    frame_idx: int | None = None
    shift: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SLOT_KINDS:
            raise ValueError(f"slot kind must be one of {SLOT_KINDS}, got {self.kind!r}")
        if (self.kind == FRAME) != (self.frame_idx is not None):
            raise ValueError("a frame slot needs a frame_idx and a memory slot must not have one")

    def label(self) -> str:
        return f"f{self.frame_idx}" if self.kind == FRAME else self.kind


@dataclass(frozen=True)
class CacheGeometry:
    """Sizes a cache is allocated for; all derived from the model config and the latent shape."""

    num_layers: int
    batch: int
    heads: int
    head_dim: int
    grid: tuple[int, int]  # (h, w) tokens of one latent frame after patching
    chunk_frames: int
    dtype: torch.dtype = torch.float32
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        for name in ("num_layers", "batch", "heads", "head_dim", "chunk_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"CacheGeometry.{name} must be >= 1, got {getattr(self, name)}")
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"CacheGeometry.grid must be (h, w) with h, w >= 1, got {self.grid}")

    @property
    def frame_tokens(self) -> int:
        return self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class ChunkPlan:
    """A policy's decision for one chunk, in Python ints (no device work, no host syncs).

    ``past`` is the slot table the chunk attends to; ``sources[i]`` names the slot of the previous
    table whose content moves into slot ``i`` (``None``: written by the policy, e.g. a memory
    token). ``evicted`` lists previous slots whose frames leave the cache; ``dropped`` the subset
    that leaves without being folded into any memory.
    """

    chunk_index: int
    first_frame: int
    n_frames: int
    past: tuple[Slot, ...]
    sources: tuple[int | None, ...]
    past_pos: tuple[int, ...]
    query_pos: tuple[int, ...]
    evicted: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()
    deferred: bool = False  # compaction needs the chunk's queries: done at each layer's first pass
    replay: bool = False  # re-encoding frames already generated (prompt-switch recache): no clock advance

    def __post_init__(self) -> None:
        if not (len(self.past) == len(self.sources) == len(self.past_pos)):
            raise ValueError("ChunkPlan.past, sources and past_pos must have equal lengths")
        if len(self.query_pos) != self.n_frames:
            raise ValueError("ChunkPlan.query_pos needs one position per new frame")

    @property
    def n_past(self) -> int:
        return len(self.past)

    @property
    def max_frame_pos(self) -> int:
        return max(self.past_pos + self.query_pos)

    @property
    def frame_indices(self) -> range:
        return range(self.first_frame, self.first_frame + self.n_frames)


@dataclass(frozen=True)
class SwitchPlan:
    """What a policy does to its cache when the prompt changes.

    ``keep``: previous slots kept, in order. ``recache``: frames (by ``frame_idx``) whose K/V must
    be recomputed under the new prompt, in one pass, and appended after the kept slots (LongLive's
    KV recache). ``pos_shift``: temporal offset of the next chunk's queries (infinity-RoPE's RoPE
    cut; the chunk after it is planned as usual).
    """

    keep: tuple[int, ...]
    recache: tuple[int, ...] = ()
    pos_shift: int = 0

    @property
    def action(self) -> str:
        if self.recache:
            return "recache"
        return "cut" if self.pos_shift else "keep"


@dataclass
class Clock:
    """Where the stream is; plain ints so that planning never touches the device.

    ``pos_shift`` is a temporal offset of the next chunk's query positions, set by a RoPE cut and
    consumed by that chunk (zero otherwise).
    """

    chunks: int = 0
    frames: int = 0
    pos_shift: int = 0


def frame_slot(frame_idx: int) -> Slot:
    return Slot(FRAME, frame_idx)


def after_chunk(plan: ChunkPlan, clock: Clock) -> tuple[tuple[Slot, ...], Clock]:
    """Slot table and clock once ``plan``'s chunk is committed: the chunk joins the past (a replay
    re-encodes frames already counted, so the clock stays; a generated chunk consumes ``pos_shift``)."""
    slots = plan.past + tuple(Slot(FRAME, i) for i in plan.frame_indices)
    if plan.replay:
        return slots, clock
    return slots, Clock(chunks=clock.chunks + 1, frames=clock.frames + plan.n_frames)
