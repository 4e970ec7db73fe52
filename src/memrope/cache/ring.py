"""A ring-buffer KV cache for bounded policies: nothing moves, nothing is re-rotated.

The slot-order cache (``base.KVCache``) keeps the context in logical order, so each chunk it moves
the recent frames forward, keeps an unrotated copy of every key (``k_raw``) and rotates the past
again at its new positions. At the real Wan-1.3B shape that is about 8 GB of traffic per chunk for
MemRoPE, 5-6% of the transformer's own. This cache removes it:

- Attention does not depend on the order of the keys (each carries its own rotation), so slots are
  *physical*: a committed frame stays where it was written, and the chunk being generated takes
  the physical slots its evicted frames free (``phys`` maps logical slot -> physical slot). The
  context is still one contiguous prefix of the buffers, because a bounded policy's context
  fills them exactly.
- Keys are stored rotated only. When a frame's temporal position changes (MemRoPE's recent FIFO
  slides by one chunk), only its temporal channel pairs are rotated by the difference
  (``rope.shift_time_``), about a third of the key's bytes; the sink never moves.
- The memories need unrotated keys, but only their means (``reduction="global"``): the committing
  pass stores each frame's mean raw key and value (one vector per head and part, ``slot_mean``,
  key and value side by side so that one reduction serves both) while the chunk's keys are in
  hand, so eviction reads a few vectors, not frames.
- Folds that keep every token position (``ring_fold == "frames"``: MemRoPE's ``spatial`` and
  adaptive memories, EMA-Sink) read the evicted frames themselves, their keys un-rotated on the fly
  from the position each carries (a rotation is orthogonal), and write one memory key per token:
  the unrotated copy of every key that slot order keeps is not needed either.

Numerics: each move of a frame rounds its temporal channels once more in the storage dtype (bf16:
2^-9 relative), and a frame moves at most ``ceil(recent / chunk)`` times before it is evicted; the
memory means are fp32 means of per-frame fp32 means; an un-rotated key carries the rounding of its
rotated storage (bf16: 2^-9 relative) into a per-position fold. The slot-order path remains for Deep
Forcing's compression (its token selection gathers in the slot-order layout) and the reference-style
baseline; ``make_cache`` picks (:func:`ring_supported`).

The window policies (``sliding_window``, ``attention_sink``, ``infinity_rope``, Deep Forcing's
Deep-Sink-only mode) run here too without saying so: their plans only keep whole frames and drop
what they evict, which is all the ring needs (no means are kept for them); Deep Sink's sink moves in
time every chunk, which is a temporal shift in place like MemRoPE's recent frames. With absolute
positions a kept frame never changes position, so a
chunk costs no cache work beyond writing itself into the slots its evicted frames freed; every
steady chunk has the same shapes (the context is always the buffers' prefix).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..rope import Rope3D, apply_rope, shift_time_, time_shift_rotation
from .base import KVCache, runs
from .plan import ABSOLUTE, FRAME, CacheGeometry, ChunkPlan, Clock, Slot, SwitchPlan, after_chunk
from .policy import CachePolicy, LayerKV
from .split import SplitKVCache, Stage

MEANS = "slot_mean"  # extra [B, slots, 2, H, D] fp32: per physical slot, mean raw key (0) and value (1)
STEP_MEMO_SIZE = 64  # chunk layouts memoised (a steady state cycles through a few)
PROBE_CHUNKS = 64  # chunks of a policy's plans (pure Python) read to decide whether it runs on the ring


def make_cache(policy: CachePolicy, geometry: CacheGeometry, rope: Rope3D,
               stages: list[Stage] | None = None) -> KVCache | SplitKVCache:
    """The cache a policy runs best on: the ring buffer when it supports one, else slot order; with
    ``stages`` on more than one device, one such cache per device (``split.py``)."""
    if stages is not None and len(stages) > 1:
        return SplitKVCache(policy, geometry, rope, stages, make_part=make_cache)
    if ring_supported(policy, geometry.chunk_frames):
        return RingKVCache(policy, geometry, rope)
    return KVCache(policy, geometry, rope)


def ring_supported(policy: CachePolicy, chunk_frames: int) -> bool:
    """Whether ``policy`` runs on the ring: it says so (``ring_storage``: it folds evicted frames from
    their means and writes memory tokens), or its plans ask nothing of the cache but keeping whole
    frames: every slot of every plan a frame carried over from the previous table, every eviction
    dropped, no deferred compaction, and none of the tensor hooks or per-layer state that work on
    the slot-order layout. Plans are pure functions of the slot table, so reading the first
    ``PROBE_CHUNKS`` of them decides it."""
    if policy.capacity_frames(chunk_frames) is None:
        return False
    if policy.ring_storage:
        return True
    if policy.uses_slot_layout():
        return False
    slots, clock = (), Clock()
    for _ in range(PROBE_CHUNKS):
        plan = policy.plan(slots, clock, chunk_frames)
        if plan.deferred or None in plan.sources or any(s.kind != FRAME for s in plan.past) \
                or set(plan.evicted) != set(plan.dropped):
            return False
        slots, clock = after_chunk(plan, clock)
    return True


def frame_means(k_raw: torch.Tensor, v: torch.Tensor, n_frames: int) -> torch.Tensor:
    """fp32 mean raw key and value of each of ``n_frames`` frames of ``k_raw``, ``v`` [B, L, H, D]:
    [B, n_frames, 2, H, D], keys and values side by side so that one reduction serves both."""
    b, n, h, d = k_raw.shape
    kv = torch.stack((k_raw, v), dim=2)  # [B, L, 2, H, D]
    kv = kv if kv.dtype == torch.float32 else kv.float()
    return kv.view(b, n_frames, n // n_frames, 2, h, d).mean(dim=2)


def folds(policy: CachePolicy, chunk_frames: int) -> bool:
    """Whether any of the first ``PROBE_CHUNKS`` plans folds an evicted frame into a memory."""
    slots, clock = (), Clock()
    for _ in range(PROBE_CHUNKS):
        plan = policy.plan(slots, clock, chunk_frames)
        if set(plan.evicted) - set(plan.dropped):
            return True
        slots, clock = after_chunk(plan, clock)
    return False


@dataclasses.dataclass(frozen=True)
class RingStep:
    """The device work one chunk's plan needs from the ring and where it goes, decided in Python."""

    fold: torch.Tensor | None  # physical slots whose frames are folded into the memories
    compact: list[int] | None  # the rare gather of the past to the front (then not memoised)
    memory: tuple[tuple[int, str, int], ...]  # (physical slot, kind, position) of each memory token
    memory_rotation: torch.Tensor | None  # [1, n, ft, 1, D / 2] complex, at the memory slots' positions
    memory_slots: torch.Tensor | None
    memory_dst: tuple[torch.Tensor, torch.Tensor] | None  # the memory slots' keys (complex) and values
    shifts: list[tuple[int, torch.Tensor, list[slice]]]  # (delta, its rotation, token spans of the slots)
    rot_after: tuple[int | None, ...]  # temporal position of each physical slot's keys, once started
    past_phys: list[int]
    chunk: list[int]  # physical slots the chunk takes
    commit_index: torch.Tensor
    span: slice | None  # the chunk's tokens when its slots are consecutive
    tokens: torch.Tensor | None  # else their token index

    @property
    def memoisable(self) -> bool:
        return self.compact is None


class RingKVCache(KVCache):
    """``KVCache`` with physical slots, rotated keys only and per-frame raw means (see module doc).

    Same protocol and same attention results (up to rounding) as the slot-order cache; a policy that
    writes slots of its own implements ``memory_value`` and the fold its ``ring_fold`` names
    (``fold_means`` or ``fold_frames``).
    """

    keeps_raw_keys = False  # rotated keys only: moved frames are shifted in place

    def __init__(self, policy: CachePolicy, geometry: CacheGeometry, rope: Rope3D):
        cap = policy.capacity_frames(geometry.chunk_frames)
        if cap is None:
            raise ValueError("a ring-buffer cache needs a bounded policy")
        if not ring_supported(policy, geometry.chunk_frames):
            raise ValueError(f"policy {policy.name} does not support ring storage")
        super().__init__(policy, geometry, rope)
        self.capacity_slots = cap
        # only folding from means needs them (``ring_fold == "frames"`` reads the evicted frames themselves)
        self.keeps_means = policy.ring_storage and policy.ring_fold == "means" and folds(policy, geometry.chunk_frames)
        shape = (geometry.batch, cap, 2, geometry.heads, geometry.head_dim)
        for layer in self.layers if self.keeps_means else ():  # fp32 means of each slot's raw keys and values
            layer.extra[MEANS] = torch.zeros(shape, dtype=torch.float32, device=geometry.device)
        # Every per-layer tensor becomes a view into one [layers, ...] tensor, and ``all_layers`` sees
        # them with layers folded into the batch: the policy's elementwise per-chunk work (EMA folds,
        # memory values) then runs once for all layers instead of once per layer.
        extras = {}
        for key in self.layers[0].extra:
            extras[key] = torch.stack([layer.extra[key] for layer in self.layers])
            for i, layer in enumerate(self.layers):
                layer.extra[key] = extras[key][i]
        self.stacked_extra = extras
        self.all_layers = LayerKV(k=self.stacked["k"].flatten(0, 1), v=self.stacked["v"].flatten(0, 1),
                                  k_raw=None, extra={key: t.flatten(0, 1) for key, t in extras.items()})
        self.phys: list[int] = []  # physical slot of each committed logical slot
        self._rot: list[int | None] = [None] * cap  # temporal position each physical slot's keys carry
        self._next_phys: list[int] = []
        self._chunk_phys: list[int] = []
        self._chunk_span: slice | None = None
        self._commit_index: torch.Tensor | None = None
        self._chunk_tokens: torch.Tensor | None = None  # token index of the chunk's scattered slots
        self._indices: dict[tuple[tuple[int, ...], bool], torch.Tensor] = {}
        self._shifts: dict[int, torch.Tensor] = {}  # delta -> its temporal rotation (a few recur)
        self._steps: dict[tuple, RingStep] = {}  # chunk layout -> its step (see _layout)
        # Captured passes (models/graphs.py) read where the chunk goes from tensors that never move:
        # n_frames -> (token index, slot index), refilled once per chunk (see ``static_writes``).
        self._static: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    # ----------------------------------------------------------------- chunk protocol
    def _start(self, plan: ChunkPlan) -> ChunkPlan:
        if plan.deferred:
            raise RuntimeError(f"{self.policy.name}: deferred compaction is not supported by the ring cache")
        self.rope.check_positions(plan.max_frame_pos, f"{self.policy.name}: temporal position")
        key = (tuple(self.phys), tuple(self._rot), plan.sources, plan.past_pos, plan.query_pos, plan.evicted,
               plan.dropped, tuple(s.kind for s in plan.past))
        step = self._steps.get(key)
        if step is None:
            step = self._layout(plan)
            if step.memoisable:
                if len(self._steps) >= STEP_MEMO_SIZE:
                    self._steps.clear()
                self._steps[key] = step
        if step.fold is not None and self.keeps_means:
            # frames have equal sizes, so the mean of per-frame means is the mean of the frames
            means = self.all_layers.extra[MEANS].index_select(1, step.fold).mean(dim=1, keepdim=True)  # [LB,1,2,H,D]
            self.policy.fold_means(self.all_layers, plan, means[:, :, 0], means[:, :, 1])
        elif step.fold is not None:
            self.policy.fold_frames(self.all_layers, plan, self._read_frames)
        if step.compact is not None:
            self._compact(step.compact)
        if step.memory:
            self._write_memory(step)
        k = self.stacked["k"]  # [layers, B, T, H, D]
        for delta, rotation, spans in step.shifts:
            for span in spans:
                shift_time_(k[:, :, span], delta, self.rope, rotation)
        self._rot = list(step.rot_after)
        self._next_phys, self._chunk_phys = step.past_phys, step.chunk
        self._commit_index, self._chunk_span, self._chunk_tokens = step.commit_index, step.span, step.tokens
        if self.static_writes:  # the same index tensors every chunk, refilled: one graph per timestep
            ft = self.geometry.frame_tokens
            tokens, slots = self._static.setdefault(plan.n_frames, (
                torch.empty(plan.n_frames * ft, dtype=torch.long, device=step.commit_index.device),
                torch.empty(plan.n_frames, dtype=torch.long, device=step.commit_index.device)))
            tokens.copy_(self._index(tuple(step.chunk), tokens=True))
            slots.copy_(step.commit_index)
            self._chunk_span, self._chunk_tokens, self._commit_index = None, tokens, slots
        self.query_freqs = self._freqs_for(plan.query_pos)
        self.plan = plan
        self._committed = [False] * self.geometry.num_layers
        self._prepared = [True] * self.geometry.num_layers
        return plan

    def _layout(self, plan: ChunkPlan) -> RingStep:
        """Where everything of ``plan`` goes, in Python only (no device work): memoised per layout, since
        the steady state cycles through a few and the per-chunk bookkeeping then costs a lookup."""
        ft = self.geometry.frame_tokens
        folded = [i for i in plan.evicted if i not in plan.dropped]
        fold = self._index(tuple(self.phys[i] for i in folded)) if folded else None
        past_phys = self._place(plan)
        n_ctx = plan.n_past + plan.n_frames
        taken = set(past_phys)
        chunk = [p for p in range(self.capacity_slots) if p not in taken][: plan.n_frames]
        rot = list(self._rot)
        compact = None
        if max(past_phys + chunk, default=-1) >= n_ctx:  # the context must be the prefix [0, n_ctx)
            compact = past_phys  # rare (e.g. after a switch kept slots spread over the ring): not memoised
            rot = [rot[p] for p in past_phys] + [None] * (self.capacity_slots - len(past_phys))
            past_phys, chunk = list(range(plan.n_past)), list(range(plan.n_past, n_ctx))
        # Memory tokens: written rotated at their slot's position, all kinds at once.
        memory = tuple((past_phys[i], slot.kind, plan.past_pos[i]) for i, slot in enumerate(plan.past)
                       if plan.sources[i] is None)
        for p, _, pos in memory:
            rot[p] = pos
        memory_rotation = memory_slots = memory_dst = None
        if memory:
            memory_dst = self._memory_views(memory)
            rotation = self._freqs_for(tuple(pos for _, _, pos in memory)).rotation  # [1, n * ft, 1, D / 2]
            memory_rotation = rotation.unflatten(1, (len(memory), ft))  # [1, n, ft, 1, D / 2]
            memory_slots = self._index(tuple(p for p, _, _ in memory))
        # Frames seen at a new position: their temporal pairs shifted, grouped by shift and by runs of slots.
        by_delta: dict[int, list[int]] = {}
        for i, p in enumerate(past_phys):
            if plan.sources[i] is None:
                continue
            at = rot[p]
            if at is None:
                raise RuntimeError(f"physical slot {p} holds no rotated keys")  # a bookkeeping bug
            if plan.past_pos[i] != at:
                by_delta.setdefault(plan.past_pos[i] - at, []).append(p)
                rot[p] = plan.past_pos[i]
        shifts = []
        for delta, slots in by_delta.items():
            if delta not in self._shifts:
                self._shifts[delta] = time_shift_rotation(delta, self.rope)
            shifts.append((delta, self._shifts[delta], [slice(a * ft, b * ft) for a, b in runs(slots)]))
        (first, end), *rest = runs(chunk)
        contiguous = not rest and chunk == list(range(first, end))
        return RingStep(fold=fold, compact=compact, memory=memory, memory_rotation=memory_rotation,
                        memory_slots=memory_slots, memory_dst=memory_dst, shifts=shifts, rot_after=tuple(rot),
                        past_phys=past_phys,
                        chunk=chunk, commit_index=self._index(tuple(chunk)),
                        span=slice(first * ft, end * ft) if contiguous else None,
                        tokens=None if contiguous else self._index(tuple(chunk), tokens=True))

    def _read_frames(self, slots) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw keys and values [LB, m, ft, H, D] (fp32) of committed logical ``slots``, every layer at
        once: the keys un-rotated from the position each carries (``ring_fold == "frames"``)."""
        ft = self.geometry.frame_tokens
        phys = tuple(self.phys[i] for i in slots)
        index = self._index(phys)
        every = self.all_layers
        k = every.k.unflatten(1, (-1, ft)).index_select(1, index).flatten(1, 2)  # [LB, m * ft, H, D]
        v = every.v.unflatten(1, (-1, ft)).index_select(1, index).float()  # [LB, m, ft, H, D]
        freqs = self._freqs_for(tuple(self._rot[p] for p in phys))
        return apply_rope(k.float(), freqs, inverse=True).unflatten(1, (len(phys), ft)), v

    def _place(self, plan: ChunkPlan) -> list[int]:
        """Physical slot of each slot of the new past: moved slots keep theirs; policy-written
        slots (memory tokens) reuse the one the same-numbered slot of their kind had, else take the
        lowest free one."""
        placed: list[int | None] = [self.phys[s] if s is not None else None for s in plan.sources]
        used = {p for p in placed if p is not None}
        by_kind: dict[str, list[int]] = {}
        for i, slot in enumerate(self.slots):
            if slot.kind != FRAME:
                by_kind.setdefault(slot.kind, []).append(self.phys[i])
        seen: dict[str, int] = {}
        free = [p for p in range(self.capacity_slots) if p not in used]
        for i, p in enumerate(placed):
            if p is None:
                kind = plan.past[i].kind
                nth = seen[kind] = seen.get(kind, -1) + 1
                wanted = by_kind.get(kind, [])
                want = wanted[nth] if nth < len(wanted) else None
                p = want if want in free else free[0]
                free.remove(p)
                placed[i] = p
        return [int(p) for p in placed]

    def _compact(self, past_phys: list[int]) -> None:
        """Rare path: gather the past into physical slots [0, n_past) in logical order, with the means
        that describe them (the step's layout already renumbers the slots and their positions)."""
        n = len(past_phys)
        ft = self.geometry.frame_tokens
        device = self.layers[0].k.device
        src = torch.cat([torch.arange(p * ft, (p + 1) * ft) for p in past_phys]).to(device)
        for big in self.stacked.values():
            big[:, :, : n * ft] = big[:, :, src]
        order = torch.tensor(past_phys, device=device)
        for layer in self.layers if self.keeps_means else ():
            mean = layer.extra[MEANS]
            mean[:, :n] = mean[:, order]

    def _write_memory(self, step: RingStep) -> None:
        """Memory slots of every layer at once (layers folded into the batch) and all kinds in one
        rotation: each memory key, rotated at its slot's position, fills its slot: one vector per slot
        broadcast over its tokens, or one per token (P = 1 or ft below). Their slot means are not kept:
        only frames are ever evicted and folded."""
        every = self.all_layers
        nth: dict[str, int] = {}
        values = []
        for _, kind, _ in step.memory:
            nth[kind] = nth.get(kind, -1) + 1
            values.append(self.policy.memory_value(every, kind, nth[kind]))  # [LB, P, H, D] each
        k_mem = torch.stack([k for k, _ in values], dim=1)  # [LB, n, P, H, D]
        v_mem = torch.stack([v for _, v in values], dim=1)
        pairs = torch.view_as_complex(k_mem.float().unflatten(-1, (-1, 2)).contiguous())  # [LB, n, P, H, D/2]
        if step.memory_dst is not None:  # fp32 storage, consecutive memory slots: rotate straight into them
            k_dst, v_dst = step.memory_dst
            torch.mul(pairs, step.memory_rotation, out=k_dst)
            v_dst.copy_(v_mem)  # broadcast over the slot's tokens when P = 1
            return
        ft = self.geometry.frame_tokens
        k_rot = torch.view_as_real(pairs * step.memory_rotation).flatten(-2)  # [LB, n, ft, H, D]
        dtype = every.k.dtype
        every.k.unflatten(1, (-1, ft)).index_copy_(1, step.memory_slots, k_rot.to(dtype))
        every.v.unflatten(1, (-1, ft)).index_copy_(1, step.memory_slots, v_mem.expand(-1, -1, ft, -1, -1).to(dtype))

    def _memory_views(self, memory: tuple[tuple[int, str, int], ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Views of consecutive memory slots in fp32 storage (keys as complex pairs), else None."""
        slots = [p for p, _, _ in memory]
        every = self.all_layers
        if every.k.dtype != torch.float32 or slots != list(range(slots[0], slots[0] + len(slots))):
            return None
        ft = self.geometry.frame_tokens
        span = slice(slots[0], slots[-1] + 1)
        k_dst = torch.view_as_complex(every.k.unflatten(1, (-1, ft))[:, span].unflatten(-1, (-1, 2)))
        return k_dst, every.v.unflatten(1, (-1, ft))[:, span]  # [LB, n, ft, H, D / 2] complex; [LB, n, ft, H, D]

    def _index(self, slots: tuple[int, ...], tokens: bool = False) -> torch.Tensor:
        """Device index of physical slots (or of all their tokens, in slot order), memoised: the
        steady state cycles through a few layouts."""
        key = (slots, tokens)
        if key not in self._indices:
            ft = self.geometry.frame_tokens
            index = [p * ft + j for p in slots for j in range(ft)] if tokens else list(slots)
            self._indices[key] = torch.tensor(index, dtype=torch.long, device=self.layers[0].k.device)
        return self._indices[key]

    def update(self, layer_idx: int, k_rot: torch.Tensor, v: torch.Tensor, k_raw: torch.Tensor | None = None,
               commit: bool = False, q_raw: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        plan = self._require_plan()
        layer = self.layers[layer_idx]
        if self._chunk_span is not None:
            layer.k[:, self._chunk_span] = k_rot
            layer.v[:, self._chunk_span] = v
        else:  # scattered physical slots
            layer.k.index_copy_(1, self._chunk_tokens, k_rot)
            layer.v.index_copy_(1, self._chunk_tokens, v)
        if commit:
            if self._committed[layer_idx]:
                raise RuntimeError(f"layer {layer_idx} committed twice in chunk {plan.chunk_index}")
            if self.keeps_means:
                if k_raw is None:
                    raise ValueError(f"policy {self.policy.name} needs the unrotated keys at commit")
                layer.extra[MEANS].index_copy_(1, self._commit_index, frame_means(k_raw, v, plan.n_frames))
            self.policy.after_commit(layer, plan, self.geometry, q_raw)
            self._committed[layer_idx] = True
        end = (plan.n_past + plan.n_frames) * self.geometry.frame_tokens
        return layer.k[:, :end], layer.v[:, :end]

    def _layout_signature(self, plan: ChunkPlan) -> tuple:
        if self.static_writes:  # the chunk's slots are read from fixed index tensors
            return ("ring", plan.n_past, plan.n_frames)
        return ("ring", plan.n_past, plan.n_frames, tuple(self._chunk_phys))

    def end_chunk(self) -> ChunkPlan:
        plan = super().end_chunk()
        for p, pos in zip(self._chunk_phys, plan.query_pos, strict=True):
            self._rot[p] = pos
        self.phys = self._next_phys + self._chunk_phys
        return plan

    def switch(self, cut: bool = False) -> SwitchPlan:
        """The policy's response to a prompt change; kept slots stay where they are physically."""
        self._check_idle()
        sw = self.policy.on_switch(self.slots, self.clock, cut)
        self.phys = [self.phys[i] for i in sw.keep]
        self.slots = tuple(self.slots[i] for i in sw.keep)
        self.clock = dataclasses.replace(self.clock, pos_shift=sw.pos_shift)
        return sw

    # ----------------------------------------------------------------- save / resume
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The physical layout as it is (so a resumed stream attends in the same key order and stays
        bit-identical), with the slot map and the position each slot's keys are rotated at."""
        self._check_idle()
        n_phys = max(self.phys, default=-1) + 1
        n_tok = n_phys * self.geometry.frame_tokens
        tensors = {}
        for i, layer in enumerate(self.layers):
            tensors[f"{i}.k"] = layer.k[:, :n_tok]
            tensors[f"{i}.v"] = layer.v[:, :n_tok]
            tensors.update({f"{i}.extra.{key}": t for key, t in layer.extra.items()})
        data = {"policy": self.policy.describe(), "clock": dataclasses.asdict(self.clock),
                "slots": [[s.kind, s.frame_idx, s.shift] for s in self.slots],
                "storage": "ring", "phys": list(self.phys), "rotated_at": self._rot[:n_phys]}
        return {k: t.contiguous() for k, t in tensors.items()}, data

    def load_state_dict(self, tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
        self._check_idle()
        if data["policy"] != self.policy.describe():
            raise ValueError(f"saved cache belongs to {data['policy']}, not {self.policy.describe()}")
        if data.get("storage") != "ring":
            tensors, data = self._from_slot_order(tensors, data)
        slots = tuple(Slot(kind, idx, shift) for kind, idx, shift in data["slots"])
        n_phys = len(data["rotated_at"])
        n_tok = n_phys * self.geometry.frame_tokens
        for i, layer in enumerate(self.layers):
            for name in ("k", "v"):
                target = getattr(layer, name)
                target[:, :n_tok] = tensors[f"{i}.{name}"].to(target.device, target.dtype)
            legacy = f"{i}.extra.slot_mean_k"  # states saved before keys and values shared one tensor
            if f"{i}.extra.{MEANS}" not in tensors and legacy in tensors:
                tensors = {**tensors, f"{i}.extra.{MEANS}": torch.stack(
                    (tensors[legacy], tensors[f"{i}.extra.slot_mean_v"]), dim=2)}
            for key, t in layer.extra.items():
                t.copy_(self._saved_extra(tensors, i, key, slots).to(t.device, t.dtype))
        self.slots = slots
        self.clock = Clock(**data["clock"])
        self.phys = [int(p) for p in data["phys"]]
        self._rot = list(data["rotated_at"]) + [None] * (self.capacity_slots - n_phys)

    def _from_slot_order(self, tensors: dict[str, torch.Tensor], data: dict[str, Any]
                         ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """A slot-order state (what runs saved before their policy ran on the ring): slot i in
        physical slot i. Absolute positions: its keys are already rotated at the frame's own position.
        Re-indexing policies kept unrotated keys (``k_raw``): they are rotated here at each slot's
        position (any position will do, the next chunk shifts each slot to its own), and the
        per-frame means a folding policy needs are taken from them."""
        slots = [Slot(kind, idx, shift) for kind, idx, shift in data["slots"]]
        positions = [self.policy.position_of(i, s) for i, s in enumerate(slots)]
        if self.policy.rotate_at_read and slots:
            if any(f"{i}.k_raw" not in tensors for i in range(self.geometry.num_layers)):
                raise ValueError("this saved slot-order cache has no unrotated keys (k_raw) for a policy that "
                                 "re-indexes positions; resume it with the memrope version that wrote it")
            freqs = self._freqs_for(tuple(positions))
            tensors = dict(tensors)
            ft = self.geometry.frame_tokens
            for i in range(self.geometry.num_layers):
                k_raw, v = tensors[f"{i}.k_raw"], tensors[f"{i}.v"]
                tensors[f"{i}.k"] = apply_rope(k_raw.float(), freqs).to(k_raw.dtype)
                if self.keeps_means:
                    kept = frame_means(k_raw, v, k_raw.shape[1] // ft)  # [B, slots kept, 2, H, D]
                    means = kept.new_zeros((kept.shape[0], self.capacity_slots, *kept.shape[2:]))
                    means[:, : kept.shape[1]] = kept
                    tensors[f"{i}.extra.{MEANS}"] = means
        elif self.policy.positions != ABSOLUTE:
            raise ValueError("this saved cache keeps keys rotated at positions the ring cannot tell; resume it "
                             "with the memrope version that wrote it")
        return tensors, {**data, "phys": list(range(len(slots))), "rotated_at": positions}

    def persistent_state(self) -> list[dict[str, torch.Tensor]]:
        """Copies of the committed physical slots (what read passes must leave unchanged)."""
        ft = self.geometry.frame_tokens
        phys = self._next_phys if self.plan is not None else self.phys
        out = []
        for layer in self.layers:
            snap = {}
            for p in phys:
                snap[f"k{p}"] = layer.k[:, p * ft:(p + 1) * ft].clone()
                snap[f"v{p}"] = layer.v[:, p * ft:(p + 1) * ft].clone()
            snap.update({f"extra.{k}": t.clone() for k, t in layer.extra.items()})
            out.append(snap)
        return out
