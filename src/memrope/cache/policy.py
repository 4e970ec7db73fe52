"""The policy interface and one layer's cache tensors.

A policy holds configuration only, never stream state: the plan of a chunk is a pure function of
the committed slot table and the clock (``plan.py``), and the policy's tensor work happens in the
hooks the cache calls once per chunk (``before_compaction``, ``after_compaction``, ...).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..rope import Rope3D, RopeFreqs
from .plan import ABSOLUTE, FRAME, CacheGeometry, ChunkPlan, Clock, Slot, SwitchPlan

FrameReader = Callable[[Sequence[int]], tuple[torch.Tensor, torch.Tensor]]
SLOT_LAYOUT_HOOKS = ("before_compaction", "after_compaction", "deferred_compaction", "after_commit",
                     "allocate_extra")


def slot_order_frames(layer: LayerKV, frame_tokens: int) -> FrameReader:
    """The slot-order cache's ``FrameReader``: unrotated keys and values of consecutive slots as
    stored, views [B, m, frame_tokens, H, D] (no copy)."""
    def read(slots: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = slots[0], slots[-1] + 1
        if list(slots) != list(range(lo, hi)):
            raise ValueError(f"slot-order frames are read in runs of consecutive slots, got {list(slots)}")
        return tuple(t[:, lo * frame_tokens:hi * frame_tokens].unflatten(1, (hi - lo, frame_tokens))
                     for t in (layer.k_raw, layer.v))
    return read


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
    source: ClassVar[str]  # the released code followed (owner/repo@commit files), or that only the paper was
    rotate_at_read: ClassVar[bool] = False
    positions: ClassVar[str] = "absolute"  # ABSOLUTE (frame index) or BY_SLOT (context index)
    recaches_on_switch: ClassVar[bool] = False  # on_switch may ask for frames to be re-encoded
    switch_options: ClassVar[tuple[str, ...]] = ()  # config fields that matter only at a prompt switch

    @property
    def ring_storage(self) -> bool:
        """Whether this policy runs on the ring-buffer cache (``ring.RingKVCache``) although it writes
        slots of its own (memory tokens): it then needs no unrotated keys and implements
        ``memory_value`` and the fold its ``ring_fold`` names."""
        return False

    @property
    def ring_fold(self) -> str:
        """What the ring hands this policy's fold: ``"means"`` (``fold_means``: the evicted frames' mean
        raw key and value, kept per frame at commit) or ``"frames"`` (``fold_frames``: the frames
        themselves, their keys un-rotated, for folds that keep every token position)."""
        return "means"

    def uses_slot_layout(self) -> bool:
        """Whether this policy's tensor hooks read or write the slot-order layout (``base.KVCache``),
        which the ring buffer does not keep: any of ``SLOT_LAYOUT_HOOKS`` overridden. A policy whose
        hooks do nothing in some configurations says so by overriding this."""
        return any(getattr(type(self), hook) is not getattr(CachePolicy, hook) for hook in SLOT_LAYOUT_HOOKS)

    def keeps_commit_state(self) -> bool:
        """Whether ``after_commit`` keeps per-commit state (then a pass must not be captured as a CUDA
        graph): overridden, unless a policy says its override does nothing in this configuration."""
        return type(self).after_commit is not CachePolicy.after_commit

    def fold_means(self, layer: LayerKV, plan: ChunkPlan, k_means: torch.Tensor, v_means: torch.Tensor) -> None:
        """Ring storage, ``ring_fold == "means"``: fold the evicted frames, given as the fp32 mean
        [B, 1, H, D] of their raw keys and of their values."""
        raise NotImplementedError(f"{self.name} does not support ring storage")

    def fold_frames(self, layer: LayerKV, plan: ChunkPlan, frames: FrameReader) -> None:
        """Ring storage, ``ring_fold == "frames"``: fold the evicted frames; ``frames(slots)`` gives the
        raw keys and the values [B, len(slots), frame_tokens, H, D] (fp32) of committed slots."""
        raise NotImplementedError(f"{self.name} does not support ring storage")

    def memory_value(self, layer: LayerKV, kind: str, index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Ring storage: the raw key and value [B, 1 or frame_tokens, H, D] of the ``index``-th slot of
        kind ``kind`` in the past (one value broadcast over the slot's tokens, or one per token)."""
        raise NotImplementedError(f"{self.name} does not support ring storage")

    def rebuild_extra(self, key: str, saved: dict[str, torch.Tensor], slots: tuple[Slot, ...],
                      geo: CacheGeometry) -> torch.Tensor | None:
        """A saved state written before per-layer state ``key`` existed: rebuild it from the layer's
        saved tensors (``k``, ``v``, ``k_raw``) and slot table, or ``None`` when it cannot be."""
        return None

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

    def rope_freqs(self, rope: Rope3D, positions: torch.Tensor, geo: CacheGeometry) -> RopeFreqs:
        """RoPE tables of frames at ``positions`` ([F] ints): the model's own, unless a policy changes
        the frequencies themselves (LoL's per-head jitter)."""
        return rope.freqs(positions, geo.grid)

    def position_of(self, index: int, slot: Slot) -> int:
        """Temporal RoPE position of ``slot`` sitting at ``index`` of the context."""
        if self.positions == ABSOLUTE:
            if slot.frame_idx is None:
                raise ValueError(f"{self.name}: absolute positions need frame slots, got {slot.kind}")
            return slot.frame_idx + slot.shift
        return index + slot.shift

    def on_switch(self, slots: tuple[Slot, ...], clock: Clock, cut: bool) -> SwitchPlan:
        """Prompt change (``cut``: a hard scene cut). Default: keep the cache as it is."""
        return SwitchPlan(keep=tuple(range(len(slots))))

    def deferred_compaction(self, layer: LayerKV, plan: ChunkPlan, geo: CacheGeometry, rope: Rope3D,
                            q_raw: torch.Tensor) -> None:
        """Compaction that needs the chunk's queries (plans with ``deferred``)."""
        raise NotImplementedError(f"{self.name} planned a deferred compaction it does not implement")

    def after_commit(self, layer: LayerKV, plan: ChunkPlan, geo: CacheGeometry, q_raw: torch.Tensor) -> None:
        """Per-layer bookkeeping once the chunk's clean K/V are written (e.g. keep its queries)."""

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name, **vars(self.config)}


def append_plan(policy: CachePolicy, slots: tuple[Slot, ...], clock: Clock, n_frames: int) -> ChunkPlan:
    """Plan that keeps every committed slot in place and appends the new chunk after it."""
    n = len(slots)
    return ChunkPlan(
        chunk_index=clock.chunks,
        first_frame=clock.frames,
        n_frames=n_frames,
        past=slots,
        sources=tuple(range(n)),
        past_pos=tuple(policy.position_of(i, s) for i, s in enumerate(slots)),
        query_pos=new_positions(policy, n, clock, n_frames),
    )


def new_positions(policy: CachePolicy, index: int, clock: Clock, n_frames: int) -> tuple[int, ...]:
    """Positions of the chunk's frames placed at context index ``index`` on, plus the clock's
    one-chunk ``pos_shift`` (a RoPE cut)."""
    return tuple(policy.position_of(index + j, Slot(FRAME, clock.frames + j)) + clock.pos_shift
                 for j in range(n_frames))
