"""The window policies on the ring buffer (``sliding_window``, ``attention_sink``, ``infinity_rope``):
chosen from their plans alone, attending like slot-order storage (prompt switches, LongLive recache,
KV flush and RoPE cut included), no frame ever moved, static shapes once full, resumable."""

from __future__ import annotations

import pytest
import torch

from memrope.cache import KVCache, make_policy
from memrope.cache.plan import FRAME, ChunkPlan, Slot
from memrope.cache.ring import MEANS, RingKVCache, make_cache, ring_supported
from memrope.cache.sliding_window import SlidingWindow
from memrope.rope import Rope3D, apply_rope

from .helpers import CHUNK, GRID, HEAD_DIM, chunk_kv, geometry
from .test_ring import QUERY, attend, attends_alike, step

FT = GRID[0] * GRID[1]
WINDOWS = [("sliding_window", {}), ("sliding_window", {"window": 9}), ("attention_sink", {}),
           ("attention_sink", {"sink": 1, "window": 7}), ("infinity_rope", {}), ("infinity_rope", {"window": 9}),
           ("deep_forcing", {"compression": False, "sink": 14}), ("deep_forcing", {"compression": False, "window": 9,
                                                                                 "sink": 2})]


def pair(name: str, options: dict) -> tuple[KVCache, RingKVCache]:
    rope = Rope3D(HEAD_DIM)
    slot = KVCache(make_policy(name, options), geometry(), rope)
    ring = make_cache(make_policy(name, options), geometry(), rope)
    assert isinstance(ring, RingKVCache)
    return slot, ring


def test_the_ring_is_chosen_from_the_plans_alone():
    for name in ("sliding_window", "attention_sink", "infinity_rope", "memrope", "deep_forcing_sink_only",
                 "memrope_adaptive", "ema_sink"):
        assert ring_supported(make_policy(name), CHUNK), name
    for name, options in (("deep_forcing", {}), ("full", {})):
        assert not ring_supported(make_policy(name, options), CHUNK), name

    class Hooked(SlidingWindow):  # per-layer tensor work on the slot-order layout
        def after_commit(self, layer, plan, geo, q_raw):
            pass

    class Memory(SlidingWindow):  # a plan with a slot written by the policy
        def plan(self, slots, clock, n_frames) -> ChunkPlan:
            plan = super().plan(slots, clock, n_frames)
            if not plan.evicted:
                return plan
            past = (Slot("long"),) + plan.past[1:]
            return ChunkPlan(plan.chunk_index, plan.first_frame, n_frames, past, (None,) + plan.sources[1:],
                             plan.past_pos, plan.query_pos, plan.evicted, plan.dropped)

    for policy in (Hooked(), Memory()):
        assert not ring_supported(policy, CHUNK)
        assert type(make_cache(policy, geometry(), Rope3D(HEAD_DIM))) is KVCache


@pytest.mark.parametrize(("name", "options"), WINDOWS)
def test_window_ring_attends_like_slot_order_through_switches(name, options):
    attends_alike(*pair(name, options), 16, {6: False, 11: True}, what=f"{name} {options}")


@pytest.mark.parametrize("name", ["sliding_window", "attention_sink"])
def test_absolute_positions_never_touch_a_kept_frame(name):
    """A kept frame's keys and values are bit-identical from one chunk to the next: nothing moves or
    re-rotates; the chunk only writes into the slots its evictions freed. No means are kept."""
    _, ring = pair(name, {})
    for _ in range(7):
        step(ring, QUERY)
    assert all(MEANS not in layer.extra for layer in ring.layers)
    before_k, before_v = ring.layers[0].k.clone(), ring.layers[0].v.clone()
    where = {s.frame_idx: p for s, p in zip(ring.slots, ring.phys)}
    plan = ring.begin_chunk(CHUNK)
    for s in plan.past:
        span = slice(where[s.frame_idx] * FT, (where[s.frame_idx] + 1) * FT)
        assert torch.equal(ring.layers[0].k[:, span], before_k[:, span])
        assert torch.equal(ring.layers[0].v[:, span], before_v[:, span])
    attend(ring, QUERY, plan.first_frame)
    ring.end_chunk()


@pytest.mark.parametrize(("name", "options"), WINDOWS[::2])
def test_static_shapes_once_full(name, options):
    """Every steady chunk attends to the same prefix of the buffers and, with static writes (captured
    passes), has one pass signature: one CUDA graph per pass for the whole stream."""
    _, ring = pair(name, options)
    ring.static_writes = True
    cap = ring.policy.capacity_frames(CHUNK)
    signatures, lengths = set(), set()
    for _ in range(14):
        plan = ring.begin_chunk(CHUNK)
        if plan.n_past + plan.n_frames == cap:
            signatures.add(ring.pass_signature())
            k, _ = ring.update(0, torch.zeros(1, CHUNK * FT, 2, HEAD_DIM), torch.zeros(1, CHUNK * FT, 2, HEAD_DIM))
            lengths.add(k.shape[1])
        for layer in range(2):
            kk, vv = chunk_kv(plan.first_frame, layer)
            ring.update(layer, apply_rope(kk, ring.query_freqs), vv, k_raw=kk, commit=True)
        ring.end_chunk()
    assert len(signatures) == 1 and None not in signatures and lengths == {cap * FT}


@pytest.mark.parametrize(("name", "options"), WINDOWS[::2])
def test_ring_state_resumes_bit_for_bit(name, options):
    _, ring = pair(name, options)
    for _ in range(8):
        step(ring, QUERY)
    tensors, data = ring.state_dict()
    _, resumed = pair(name, options)
    resumed.load_state_dict(tensors, data)
    for _ in range(4):
        for a, b in zip(step(ring, QUERY), step(resumed, QUERY), strict=True):
            assert torch.equal(a, b)


def test_a_slot_order_state_of_an_absolute_policy_resumes_on_the_ring():
    """Runs checkpointed while sliding_window / attention_sink / Deep Sink / infinity_rope still ran in
    slot order continue (Deep Sink's sink was stored rotated at its moved positions: what the ring
    expects)."""
    for name, options in (("sliding_window", {}), ("attention_sink", {}),
                          ("deep_forcing", {"compression": False, "sink": 14})):
        slot, ring = pair(name, options)
        for _ in range(9):
            step(slot, QUERY)
        ring.load_state_dict(*slot.state_dict())
        attends_alike(slot, ring, 5, what=name)
    # re-indexing (infinity_rope): its unrotated keys are rotated at each slot's position on load
    slot, ring = pair("infinity_rope", {})
    for _ in range(5):
        step(slot, QUERY)
    ring.load_state_dict(*slot.state_dict())
    attends_alike(slot, ring, 5, what="infinity_rope")


def test_window_ring_bytes():
    """Absolute windows hold the same keys and values in either layout; infinity_rope's ring drops the
    unrotated copy slot order keeps."""
    for name, smaller in (("sliding_window", False), ("attention_sink", False), ("infinity_rope", True)):
        slot, ring = pair(name, {})
        assert (ring.nbytes() < slot.nbytes()) == smaller and ring.nbytes() <= slot.nbytes()
        assert all(s.kind == FRAME for s in ring.slots)
