"""The KV cache: explicit per-layer tensors, a slot table and a clock, governed by a policy.

The policy plans (``plan.py``, ``policy.py``); the model decides how attention is computed; the
cache carries out the policy's plan on the tensors.

Layout: every layer keeps its context in *slot order*: slot ``i`` covers tokens
``[i * frame_tokens, (i + 1) * frame_tokens)``. The past occupies slots ``[0, n_past)`` and the
chunk being generated the slots right after it, so attention always reads one contiguous prefix
(no concatenation, no clone per pass). Keys are held attention-ready (rotated); policies that
re-index positions (``rotate_at_read``) also keep the unrotated keys and rotate the past once per
chunk, since positions never change between the passes of a chunk; for the others, a slot whose
planned position moves (Deep Forcing's sink) has its stored keys rotated in time by the difference.
(``ring.py`` is the ring-buffer variant for policies that need no unrotated keys.)
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from ..rope import Rope3D, RopeFreqs, apply_rope, shift_time_, time_shift_rotation
from .plan import BY_SLOT, FRAME, PER_TOKEN, CacheGeometry, ChunkPlan, Clock, Slot, SwitchPlan, after_chunk
from .policy import CachePolicy, LayerKV, append_plan

FREQS_MEMO_SIZE = 64  # distinct position tuples whose RoPE tables are kept (bounded policies repeat a few)


class KVCache:
    """Per-stream cache: the policy, per-layer tensors, the committed slot table and the clock.

    Protocol per chunk: ``begin_chunk(n)``; any number of read passes ``update(..., commit=False)``;
    exactly one ``update(..., commit=True)`` per layer (the clean t=0 pass); ``end_chunk()``.
    Read passes write the chunk's own K/V into the scratch slots after the past and never touch
    the past (except a policy's ``deferred`` compaction, done once at the first pass); only the
    commit pass makes the chunk part of the cache. A prompt change is ``switch()``, followed by
    ``begin_replay()`` chunks for the frames the policy wants re-encoded.
    """

    keeps_raw_keys: ClassVar[bool] = True  # re-indexing policies re-rotate from unrotated copies
    static_writes: bool = False  # set for captured passes: the chunk's destination read from fixed tensors

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
            LayerKV.allocate(geometry, first, with_raw=policy.rotate_at_read and self.keeps_raw_keys)
            for _ in range(geometry.num_layers)
        ]
        # A bounded cache keeps each of k / v / k_raw as ONE [layers, B, T, H, D] tensor whose
        # slices are the layers' buffers: the once-per-chunk moves and the rotation of the past are
        # then one operation for all layers instead of one per layer.
        self.stacked: dict[str, torch.Tensor] = {}
        if self.bounded:
            for part in ("k", "v", "k_raw"):
                if getattr(self.layers[0], part) is None:
                    continue
                self.stacked[part] = torch.stack([getattr(layer, part) for layer in self.layers])
                for i, layer in enumerate(self.layers):
                    setattr(layer, part, self.stacked[part][i])
        for layer in self.layers:
            layer.extra = policy.allocate_extra(geometry)
        self.slots: tuple[Slot, ...] = ()
        self.clock = Clock()
        self.plan: ChunkPlan | None = None
        self.query_freqs: RopeFreqs | None = None
        self._committed = [False] * geometry.num_layers
        self._prepared = [True] * geometry.num_layers
        self._rotated_at: list[int] = []  # position the rotated keys of each slot were made at
        self._freqs: dict[tuple[int, ...], RopeFreqs] = {}  # memo: steady-state positions repeat
        self._shifts: dict[int, torch.Tensor] = {}  # delta -> its temporal rotation (a few recur)

    # ----------------------------------------------------------------- chunk protocol
    def begin_chunk(self, n_frames: int) -> ChunkPlan:
        if n_frames != self.geometry.chunk_frames:
            raise ValueError(
                f"this cache was built for chunks of {self.geometry.chunk_frames} frames, got {n_frames}"
            )
        self._check_idle()
        return self._start(self.policy.plan(self.slots, self.clock, n_frames))

    def begin_replay(self, frame_indices: tuple[int, ...]) -> ChunkPlan:
        """Re-encode already generated frames (consecutive, in order) after a switch, all in one
        pass: they attend the kept slots and each other (LongLive's recache is one non-causal pass)."""
        self._check_idle()
        room = self.replay_room()
        if not 0 < len(frame_indices) <= room:
            raise ValueError(f"replay takes 1..{room} frames (the room left after the kept slots), got "
                             f"{len(frame_indices)}")
        if list(frame_indices) != list(range(frame_indices[0], frame_indices[0] + len(frame_indices))):
            raise ValueError(f"replayed frames must be consecutive, got {frame_indices}")
        n = len(self.slots)
        plan = dataclasses.replace(append_plan(self.policy, self.slots, self.clock, len(frame_indices)),
                                   first_frame=frame_indices[0], replay=True,
                                   query_pos=tuple(self.policy.position_of(n + j, Slot(FRAME, f))
                                                   for j, f in enumerate(frame_indices)))
        return self._start(plan)

    def replay_room(self) -> int:
        """Frames one replay may re-encode: what the cache holds beyond the committed slots (unbounded
        caches grow)."""
        if not self.bounded:
            return self.clock.frames
        return self.layers[0].capacity_tokens() // self.geometry.frame_tokens - len(self.slots)

    def _start(self, plan: ChunkPlan) -> ChunkPlan:
        self.rope.check_positions(plan.max_frame_pos, f"{self.policy.name}: temporal position")
        ft = self.geometry.frame_tokens
        needed = (plan.n_past + plan.n_frames) * ft
        if needed > self.layers[0].capacity_tokens():
            if self.bounded:
                raise RuntimeError(f"policy {self.policy.name} planned past its own capacity")
            for layer in self.layers:
                layer.grow(max(needed, 2 * layer.capacity_tokens()))
        if not plan.deferred:
            for layer in self.layers:
                self.policy.before_compaction(layer, plan, self.geometry)
            self._move(self._move_indices(plan.sources))
            for layer in self.layers:
                self.policy.after_compaction(layer, plan, self.geometry)
        if not self.policy.rotate_at_read:
            self._reposition(plan)
        if self.policy.rotate_at_read and plan.n_past:
            self._rotate_past(plan)
        self._rotated_at = list(plan.past_pos + plan.query_pos)  # once this chunk commits
        self.query_freqs = self._freqs_for(plan.query_pos)
        self.plan = plan
        self._committed = [False] * self.geometry.num_layers
        self._prepared = [not plan.deferred] * self.geometry.num_layers
        return plan

    def update(
        self,
        layer_idx: int,
        k_rot: torch.Tensor,
        v: torch.Tensor,
        k_raw: torch.Tensor | None = None,
        commit: bool = False,
        q_raw: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Place the chunk's K/V ([B, chunk_tokens, H, D]) after the past; return the context.

        ``k_raw``/``q_raw`` are the unrotated keys/queries, for policies that re-index or score.
        Returns (k, v) views of [B, past_tokens + chunk_tokens, H, D]: the whole attention context.
        """
        plan = self._require_plan()
        layer = self.layers[layer_idx]
        if not self._prepared[layer_idx]:
            self.policy.deferred_compaction(layer, plan, self.geometry, self.rope, q_raw)
            self._prepared[layer_idx] = True
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
            self.policy.after_commit(layer, plan, self.geometry, q_raw)
            self._committed[layer_idx] = True
        return layer.k[:, :end], layer.v[:, :end]

    def end_chunk(self) -> ChunkPlan:
        plan = self._require_plan()
        missing = [i for i, done in enumerate(self._committed) if not done]
        if missing:
            raise RuntimeError(f"chunk {plan.chunk_index} ended without a commit from layers {missing}")
        self.slots, self.clock = after_chunk(plan, self.clock)
        self.plan = None
        self.query_freqs = None
        return plan

    def switch(self, cut: bool = False) -> SwitchPlan:
        """Apply the policy's response to a prompt change; returns it (frames to re-encode)."""
        self._check_idle()
        sw = self.policy.on_switch(self.slots, self.clock, cut)
        if any(dst != src for dst, src in enumerate(sw.keep)) and not self.policy.rotate_at_read \
                and self.policy.positions == BY_SLOT:
            raise ValueError(f"{self.policy.name}: moving slots would change positions of rotated keys")
        kept = tuple(self.slots[i] for i in sw.keep)
        self._move(self._move_indices(tuple(sw.keep)))
        self._rotated_at = []  # slots moved: rotate everything again at the next chunk
        self.slots = kept
        self.clock = dataclasses.replace(self.clock, pos_shift=sw.pos_shift)
        return sw

    # ----------------------------------------------------------------- save / resume
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, plain data) that restore this cache exactly; only committed content."""
        self._check_idle()
        n_tok = len(self.slots) * self.geometry.frame_tokens
        tensors = {}
        for i, layer in enumerate(self.layers):
            tensors[f"{i}.k"] = layer.k[:, :n_tok]
            tensors[f"{i}.v"] = layer.v[:, :n_tok]
            if layer.k_raw is not None:
                tensors[f"{i}.k_raw"] = layer.k_raw[:, :n_tok]
            tensors.update({f"{i}.extra.{k}": t for k, t in layer.extra.items()})
        data = {"policy": self.policy.describe(), "clock": dataclasses.asdict(self.clock),
                "slots": [[s.kind, s.frame_idx, s.shift] for s in self.slots]}
        return {k: t.contiguous() for k, t in tensors.items()}, data

    def load_state_dict(self, tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
        self._check_idle()
        if data["policy"] != self.policy.describe():
            raise ValueError(f"saved cache belongs to {data['policy']}, not {self.policy.describe()}")
        slots = tuple(Slot(kind, idx, shift) for kind, idx, shift in data["slots"])
        n_tok = len(slots) * self.geometry.frame_tokens
        for i, layer in enumerate(self.layers):
            if n_tok > layer.capacity_tokens():
                layer.grow(n_tok)
            for name in ("k", "v", "k_raw"):
                target = getattr(layer, name)
                if target is not None:
                    target[:, :n_tok] = tensors[f"{i}.{name}"].to(target.device, target.dtype)
            for key, t in layer.extra.items():
                t.copy_(self._saved_extra(tensors, i, key, slots))
        self.slots = slots
        self.clock = Clock(**data["clock"])
        self._rotated_at = []

    def _saved_extra(self, tensors: dict[str, torch.Tensor], layer_idx: int, key: str,
                     slots: tuple[Slot, ...]) -> torch.Tensor:
        """Per-layer policy state ``key`` of a saved state; one saved before that state existed has it
        rebuilt by the policy from the layer's saved tensors (``rebuild_extra``) where it can be."""
        name = f"{layer_idx}.extra.{key}"
        if name in tensors:
            return tensors[name]
        prefix = f"{layer_idx}."
        saved = {n.removeprefix(prefix): t for n, t in tensors.items() if n.startswith(prefix) and ".extra." not in n}
        rebuilt = self.policy.rebuild_extra(key, saved, slots, self.geometry)
        if rebuilt is None:
            raise ValueError(f"saved cache has no {key!r} state for layer {layer_idx} and {self.policy.name} cannot "
                             "rebuild it; resume it with the memrope version that wrote it")
        return rebuilt

    def parts(self) -> list[tuple[int, KVCache]]:
        """(first layer, cache) per device: this cache holds every layer (``split.py`` holds several)."""
        return [(0, self)]

    # ----------------------------------------------------------------- captured passes (models/graphs.py)
    def pass_signature(self) -> tuple | None:
        """What a pass's device work depends on besides its inputs: where the chunk's keys go and how
        long the context is. ``None`` when a pass must not be captured as a CUDA graph: the cache is
        not full (shapes still change), the plan defers compaction or replays frames, or the policy
        keeps per-commit state (``after_commit``)."""
        plan = self.plan
        if not self.full() or plan.deferred or self.policy.keeps_commit_state():
            return None
        return self._layout_signature(plan)

    def full(self) -> bool:
        """A generated chunk's pass over a full bounded cache: the steady state, whose passes all have
        the same shapes (what compiled kernels are used for)."""
        plan = self.plan
        return (plan is not None and self.bounded and not plan.replay
                and plan.n_past + plan.n_frames == self.policy.capacity_frames(self.geometry.chunk_frames))

    def _layout_signature(self, plan: ChunkPlan) -> tuple:
        return ("slots", plan.n_past, plan.n_frames)

    def replayed(self, commit: bool) -> None:
        """The bookkeeping a pass does in ``update`` besides its device work, for a replayed pass."""
        plan = self._require_plan()
        if commit:
            if any(self._committed):
                raise RuntimeError(f"a layer committed twice in chunk {plan.chunk_index}")
            self._committed = [True] * self.geometry.num_layers

    def capture_state(self) -> tuple:
        return tuple(self._committed)

    def restore_capture_state(self, state: tuple) -> None:
        self._committed = list(state)

    # ----------------------------------------------------------------- inspection
    def nbytes(self) -> int:
        """Bytes held by all cache tensors (allocated, so growth of unbounded policies shows)."""
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer.tensors())

    def persistent_state(self) -> list[dict[str, torch.Tensor]]:
        """Copies of everything a chunk's read passes must leave unchanged (for tests)."""
        n_slots = len(self.slots) if self.plan is None else self.plan.n_past
        n_tok = n_slots * self.geometry.frame_tokens
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
    def _check_idle(self) -> None:
        if self.plan is not None:
            raise RuntimeError("a chunk is in progress: call end_chunk() first")

    def _require_plan(self) -> ChunkPlan:
        if self.plan is None:
            raise RuntimeError("no chunk in progress: call begin_chunk() first")
        return self.plan

    def _move(self, moves: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Copy slot contents to their new places (dst, src token indices) in k, v and k_raw."""
        if moves is None:
            return
        dst, src = moves
        if self.stacked:
            for big in self.stacked.values():
                big[:, :, dst] = big[:, :, src]  # the gather copies first: overlap is safe
            return
        for layer in self.layers:
            for t in (layer.k, layer.v, layer.k_raw):
                if t is not None:
                    t[:, dst] = t[:, src]

    def _rotate_past(self, plan: ChunkPlan) -> None:
        """Rotate the unrotated past at its planned positions, skipping the leading slots that
        neither moved nor changed position since their last rotation (the sink, in steady state)."""
        lo = 0
        while (lo < plan.n_past and lo < len(self._rotated_at) and plan.sources[lo] == lo
               and plan.past_pos[lo] == self._rotated_at[lo]):
            lo += 1
        if lo == plan.n_past:
            return
        ft = self.geometry.frame_tokens
        freqs = self._freqs_for(plan.past_pos[lo:])
        span = slice(lo * ft, plan.n_past * ft)
        if self.stacked:
            k, raw = self.stacked["k"], self.stacked["k_raw"]  # [layers, B, T, H, D]
            k[:, :, span] = apply_rope(raw[:, :, span].flatten(0, 1), freqs).unflatten(0, k.shape[:2])
            return
        for layer in self.layers:
            layer.k[:, span] = apply_rope(layer.k_raw[:, span], freqs)

    def _reposition(self, plan: ChunkPlan) -> None:
        """Keys stored rotated whose planned position differs from the one they carry (Deep Forcing's
        phase-shifted sink): only their temporal channel pairs are rotated by the difference, once per
        chunk, grouped by delta and by runs of slots, all layers at once. A slot carries the position
        its committed slot table gives it (``position_of``), so nothing extra is saved for a resume."""
        by_delta: dict[int, list[int]] = {}
        for i, src in enumerate(plan.sources):
            if src is None or plan.past_pos[i] == PER_TOKEN:
                continue
            delta = plan.past_pos[i] - self.policy.position_of(src, self.slots[src])
            if delta == 0:
                continue
            if plan.deferred and src != i:
                raise RuntimeError(f"{self.policy.name}: a deferred plan moved slot {src} and changed its position")
            by_delta.setdefault(delta, []).append(i)
        ft = self.geometry.frame_tokens
        buffers = [self.stacked["k"]] if self.stacked else [layer.k for layer in self.layers]
        for delta, slots in by_delta.items():
            if delta not in self._shifts:
                self._shifts[delta] = time_shift_rotation(delta, self.rope)
            for first, end in runs(slots):
                for k in buffers:  # [layers, B, T, H, D] or [B, T, H, D]
                    shift_time_(k[..., first * ft:end * ft, :, :], delta, self.rope, self._shifts[delta])

    def _freqs_for(self, positions: tuple[int, ...]) -> RopeFreqs:
        """The RoPE tables of ``positions``, memoised where positions recur (bounded policies that
        index by slot); absolute positions never recur, so their tables are not kept."""
        if self.policy.positions != BY_SLOT:
            device = self.layers[0].k.device
            return self.policy.rope_freqs(self.rope, torch.tensor(positions, device=device), self.geometry)
        if positions not in self._freqs:
            if len(self._freqs) >= FREQS_MEMO_SIZE:
                self._freqs.clear()
            device = self.layers[0].k.device
            self._freqs[positions] = self.policy.rope_freqs(self.rope, torch.tensor(positions, device=device),
                                                            self.geometry)
        return self._freqs[positions]

    def _move_indices(self, sources: tuple[int | None, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Token indices (dst, src) for slots whose content moves, or None when nothing moves.

        Slots only ever move towards the front, so everything before the first moved slot (the
        sink, typically) is left untouched and only the suffix is copied, once per chunk.
        """
        return slot_moves(sources, self.geometry.frame_tokens, self.layers[0].k.device)


def runs(slots: list[int]) -> list[tuple[int, int]]:
    """Sorted slots -> maximal runs [(first, end)) of consecutive slots."""
    out: list[tuple[int, int]] = []
    for s in sorted(slots):
        if out and out[-1][1] == s:
            out[-1] = (out[-1][0], s + 1)
        else:
            out.append((s, s + 1))
    return out


def slot_moves(sources: tuple[int | None, ...], frame_tokens: int,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    moves = [(dst, src) for dst, src in enumerate(sources) if src is not None and src != dst]
    if not moves:
        return None
    ft = frame_tokens
    dst = torch.cat([torch.arange(d * ft, (d + 1) * ft) for d, _ in moves]).to(device)
    src = torch.cat([torch.arange(s * ft, (s + 1) * ft) for _, s in moves]).to(device)
    return dst, src
