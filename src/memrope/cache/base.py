"""The KV cache: explicit per-layer tensors, a slot table and a clock, governed by a policy.

A *policy* decides, once per chunk and with Python integers only, which past frames the new chunk
attends to and at which temporal RoPE position (``frame_pos``) each of them is seen. The model
decides how attention is computed. The cache carries out the policy's plan on the tensors.

Layout: every layer keeps its context in *slot order*: slot ``i`` covers tokens
``[i * frame_tokens, (i + 1) * frame_tokens)``. The past occupies slots ``[0, n_past)`` and the
chunk being generated the slots right after it, so attention always reads one contiguous prefix
(no concatenation, no clone per pass). Keys are held attention-ready (rotated); policies that
re-index positions (``rotate_at_read``) also keep the unrotated keys and rotate the past once per
chunk, since positions never change between the passes of a chunk.

Two words never mix: ``frame_idx`` is a frame's absolute index in the stream (unbounded),
``frame_pos`` the temporal RoPE coordinate a policy gives it (bounded for bounded policies).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..models.rope import Rope3D, RopeFreqs, apply_rope

FRAME = "frame"
LONG_MEMORY = "long"
SHORT_MEMORY = "short"
SLOT_KINDS = (FRAME, LONG_MEMORY, SHORT_MEMORY)


@dataclass(frozen=True)
class Slot:
    """What one cache slot holds: a clean frame (with its ``frame_idx``) or a memory token."""

    kind: str
    frame_idx: int | None = None

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


@dataclass
class Clock:
    """Where the stream is; plain ints so that planning never touches the device."""

    chunks: int = 0
    frames: int = 0


@dataclass
class LayerKV:
    """One layer's tensors. All [B, capacity_tokens, H, D] in slot order."""

    k: torch.Tensor  # attention-ready (rotated) keys
    v: torch.Tensor
    k_raw: torch.Tensor | None  # unrotated post-norm keys, for policies that re-index positions
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # policy-owned state (e.g. EMA)

    @classmethod
    def allocate(cls, geo: CacheGeometry, frames: int, with_raw: bool) -> LayerKV:
        shape = (geo.batch, frames * geo.frame_tokens, geo.heads, geo.head_dim)
        new = lambda: torch.zeros(shape, dtype=geo.dtype, device=geo.device)  # noqa: E731
        return cls(k=new(), v=new(), k_raw=new() if with_raw else None)

    def tensors(self) -> list[torch.Tensor]:
        base = [self.k, self.v] + ([self.k_raw] if self.k_raw is not None else [])
        return base + list(self.extra.values())

    def capacity_tokens(self) -> int:
        return self.k.shape[1]

    def grow(self, tokens: int) -> None:
        """Reallocate to ``tokens`` capacity keeping the content (unbounded policies only)."""
        def grown(t: torch.Tensor) -> torch.Tensor:
            out = t.new_zeros((t.shape[0], tokens, *t.shape[2:]))
            out[:, : t.shape[1]] = t
            return out

        self.k, self.v = grown(self.k), grown(self.v)
        if self.k_raw is not None:
            self.k_raw = grown(self.k_raw)


class CachePolicy(ABC):
    """Decides what a chunk attends to and where; holds configuration only, never stream state."""

    name: ClassVar[str]
    paper: ClassVar[str]
    rotate_at_read: ClassVar[bool] = False

    def __init__(self, config: Any):
        self.config = config

    @abstractmethod
    def capacity_frames(self, chunk_frames: int) -> int | None:
        """Frames the cache must hold including the current chunk; ``None`` means unbounded."""

    def check_geometry(self, geo: CacheGeometry) -> None:
        """Raise ValueError when this policy's sizes cannot work with ``geo`` (e.g. chunk size)."""

    @abstractmethod
    def plan(self, slots: tuple[Slot, ...], clock: Clock, n_frames: int) -> ChunkPlan:
        """Plan the next chunk from the committed slot table (pure Python)."""

    def allocate_extra(self, geo: CacheGeometry) -> dict[str, torch.Tensor]:
        """Per-layer policy state (fixed size), allocated with the cache."""
        return {}

    def before_compaction(self, layer: LayerKV, plan: ChunkPlan, geo: CacheGeometry) -> None:
        """Tensor work that must read slots before they are moved (e.g. fold evicted frames)."""

    def after_compaction(self, layer: LayerKV, plan: ChunkPlan, geo: CacheGeometry) -> None:
        """Tensor work on the new layout (e.g. write memory tokens into their slots)."""

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name, **vars(self.config)}


def frame_slot(frame_idx: int) -> Slot:
    return Slot(FRAME, frame_idx)


def append_plan(
    slots: tuple[Slot, ...], clock: Clock, n_frames: int, pos_of: Any = None
) -> ChunkPlan:
    """Plan that keeps every committed slot in place and appends the new chunk after it.

    ``pos_of(slot_index, slot)`` gives a slot's position; by default the frame's own index
    (absolute RoPE, as in the base models).
    """
    pos_of = pos_of or (lambda i, s: s.frame_idx)
    n = len(slots)
    new = [frame_slot(clock.frames + j) for j in range(n_frames)]
    return ChunkPlan(
        chunk_index=clock.chunks,
        first_frame=clock.frames,
        n_frames=n_frames,
        past=slots,
        sources=tuple(range(n)),
        past_pos=tuple(pos_of(i, s) for i, s in enumerate(slots)),
        query_pos=tuple(pos_of(n + j, s) for j, s in enumerate(new)),
    )


def after_chunk(plan: ChunkPlan) -> tuple[tuple[Slot, ...], Clock]:
    """Slot table and clock once ``plan``'s chunk is committed: the chunk joins the past."""
    slots = plan.past + tuple(frame_slot(i) for i in plan.frame_indices)
    return slots, Clock(chunks=plan.chunk_index + 1, frames=plan.first_frame + plan.n_frames)


class KVCache:
    """Per-stream cache: the policy, per-layer tensors, the committed slot table and the clock.

    Protocol per chunk: ``begin_chunk(n)``; any number of read passes ``update(..., commit=False)``;
    exactly one ``update(..., commit=True)`` per layer (the clean t=0 pass); ``end_chunk()``.
    Read passes write the chunk's own K/V into the scratch slots after the past and never touch
    the past; only the commit pass makes the chunk part of the cache.
    """

    def __init__(self, policy: CachePolicy, geometry: CacheGeometry, rope: Rope3D):
        if rope.head_dim != geometry.head_dim:
            raise ValueError(f"RoPE head_dim {rope.head_dim} != cache head_dim {geometry.head_dim}")
        policy.check_geometry(geometry)
        self.policy = policy
        self.geometry = geometry
        self.rope = rope
        cap = policy.capacity_frames(geometry.chunk_frames)
        self.bounded = cap is not None
        first = cap if cap is not None else geometry.chunk_frames
        self.layers = [
            LayerKV.allocate(geometry, first, with_raw=policy.rotate_at_read)
            for _ in range(geometry.num_layers)
        ]
        for layer in self.layers:
            layer.extra = policy.allocate_extra(geometry)
        self.slots: tuple[Slot, ...] = ()
        self.clock = Clock()
        self.plan: ChunkPlan | None = None
        self.query_freqs: RopeFreqs | None = None
        self._committed = [False] * geometry.num_layers

    # ----------------------------------------------------------------- chunk protocol
    def begin_chunk(self, n_frames: int) -> ChunkPlan:
        if self.plan is not None:
            raise RuntimeError("begin_chunk() called again before end_chunk()")
        if n_frames != self.geometry.chunk_frames:
            raise ValueError(
                f"this cache was built for chunks of {self.geometry.chunk_frames} frames, got {n_frames}"
            )
        plan = self.policy.plan(self.slots, self.clock, n_frames)
        self.rope.check_positions(plan.max_frame_pos, f"{self.policy.name}: temporal position")
        ft = self.geometry.frame_tokens
        needed = (plan.n_past + n_frames) * ft
        moves = self._move_indices(plan.sources)
        for layer in self.layers:
            if needed > layer.capacity_tokens():
                if self.bounded:
                    raise RuntimeError(f"policy {self.policy.name} planned past its own capacity")
                layer.grow(max(needed, 2 * layer.capacity_tokens()))
            self.policy.before_compaction(layer, plan, self.geometry)
            if moves is not None:
                for t in (layer.k, layer.v, layer.k_raw):
                    if t is not None:
                        t[:, moves[0]] = t[:, moves[1]]  # the gather copies first: overlap is safe
            self.policy.after_compaction(layer, plan, self.geometry)
        device = self.layers[0].k.device
        if self.policy.rotate_at_read and plan.n_past:
            past = self.rope.freqs(torch.tensor(plan.past_pos, device=device), self.geometry.grid)
            n_tok = plan.n_past * ft
            for layer in self.layers:
                layer.k[:, :n_tok] = apply_rope(layer.k_raw[:, :n_tok], past)
        self.query_freqs = self.rope.freqs(torch.tensor(plan.query_pos, device=device), self.geometry.grid)
        self.plan = plan
        self._committed = [False] * self.geometry.num_layers
        return plan

    def update(
        self,
        layer_idx: int,
        k_rot: torch.Tensor,
        v: torch.Tensor,
        k_raw: torch.Tensor | None = None,
        commit: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Place the chunk's K/V ([B, chunk_tokens, H, D]) after the past; return the context.

        Returns (k, v) views of [B, past_tokens + chunk_tokens, H, D]: the whole attention context.
        """
        plan = self._require_plan()
        layer = self.layers[layer_idx]
        start = plan.n_past * self.geometry.frame_tokens
        end = start + k_rot.shape[1]
        layer.k[:, start:end] = k_rot
        layer.v[:, start:end] = v
        if commit:
            if self._committed[layer_idx]:
                raise RuntimeError(f"layer {layer_idx} committed twice in chunk {plan.chunk_index}")
            if layer.k_raw is not None:
                if k_raw is None:
                    raise ValueError(f"policy {self.policy.name} needs the unrotated keys at commit")
                layer.k_raw[:, start:end] = k_raw
            self._committed[layer_idx] = True
        return layer.k[:, :end], layer.v[:, :end]

    def end_chunk(self) -> ChunkPlan:
        plan = self._require_plan()
        missing = [i for i, done in enumerate(self._committed) if not done]
        if missing:
            raise RuntimeError(f"chunk {plan.chunk_index} ended without a commit from layers {missing}")
        self.slots, self.clock = after_chunk(plan)
        self.plan = None
        self.query_freqs = None
        return plan

    # ----------------------------------------------------------------- inspection
    def nbytes(self) -> int:
        """Bytes held by all cache tensors (allocated, so growth of unbounded policies shows)."""
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer.tensors())

    def persistent_state(self) -> list[dict[str, torch.Tensor]]:
        """Copies of everything a chunk's read passes must leave unchanged (for tests)."""
        n_tok = len(self.slots) * self.geometry.frame_tokens if self.plan is None else (
            self.plan.n_past * self.geometry.frame_tokens
        )
        out = []
        for layer in self.layers:
            snap = {"k": layer.k[:, :n_tok].clone(), "v": layer.v[:, :n_tok].clone()}
            if layer.k_raw is not None:
                snap["k_raw"] = layer.k_raw[:, :n_tok].clone()
            snap.update({f"extra.{k}": t.clone() for k, t in layer.extra.items()})
            out.append(snap)
        return out

    def layout(self) -> list[tuple[str, int]]:
        """(label, frame_pos) per slot as the current chunk sees it: past then the chunk itself."""
        plan = self._require_plan()
        past = [(s.label(), p) for s, p in zip(plan.past, plan.past_pos)]
        cur = [(f"cur{i}", p) for i, p in zip(plan.frame_indices, plan.query_pos)]
        return past + cur

    # ----------------------------------------------------------------- internals
    def _require_plan(self) -> ChunkPlan:
        if self.plan is None:
            raise RuntimeError("no chunk in progress: call begin_chunk() first")
        return self.plan

    def _move_indices(self, sources: tuple[int | None, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Token indices (dst, src) for slots whose content moves, or None when nothing moves.

        Slots only ever move towards the front, so everything before the first moved slot (the
        sink, typically) is left untouched and only the suffix is copied, once per chunk.
        """
        ft = self.geometry.frame_tokens
        moves = [(dst, src) for dst, src in enumerate(sources) if src is not None and src != dst]
        if not moves:
            return None
        device = self.layers[0].k.device
        dst = torch.cat([torch.arange(d * ft, (d + 1) * ft) for d, _ in moves]).to(device)
        src = torch.cat([torch.arange(s * ft, (s + 1) * ft) for _, s in moves]).to(device)
        return dst, src
