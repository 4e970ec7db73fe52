"""Per-position folds on the ring buffer (``ring_fold == "frames"``): MemRoPE's spatial and adaptive
memories and Reward Forcing's EMA-Sink read the evicted frames' keys un-rotated from the ring
instead of keeping an unrotated copy of every key, and write one memory key per token."""

from __future__ import annotations

import pytest
import torch

from memrope.cache import KVCache, make_policy
from memrope.cache.plan import EMA_SINK, FRAME
from memrope.cache.ring import MEANS, RingKVCache, make_cache
from memrope.rope import Rope3D, apply_rope

from .helpers import CHUNK, GRID, HEAD_DIM, geometry
from .test_ring import QUERY, attend, attends_alike, step

FT = GRID[0] * GRID[1]
PER_POSITION = [("memrope", {"reduction": "spatial"}), ("memrope_adaptive", {}),
                ("memrope_adaptive", {"switch": "reset"}), ("ema_sink", {}), ("ema_sink", {"alpha": 0.6})]


def pair(name: str, options: dict) -> tuple[KVCache, RingKVCache]:
    rope = Rope3D(HEAD_DIM)
    slot = KVCache(make_policy(name, options), geometry(), rope)
    ring = make_cache(make_policy(name, options), geometry(), rope)
    assert isinstance(ring, RingKVCache) and ring.policy.ring_fold == "frames"
    return slot, ring


@pytest.mark.parametrize(("name", "options"), PER_POSITION)
def test_per_position_folds_on_the_ring_attend_like_slot_order_through_switches(name, options):
    attends_alike(*pair(name, options), 16, {6: False, 11: True}, what=f"{name} {options}")


@pytest.mark.parametrize(("name", "options"), PER_POSITION[::3])
def test_memory_slots_hold_one_key_per_token_and_no_unrotated_copy(name, options):
    """Un-rotated at its position, each memory slot of the ring is the policy's per-position state,
    token by token (not one vector broadcast); the ring keeps neither k_raw nor per-frame means."""
    slot, ring = pair(name, options)
    for _ in range(7):
        step(slot, QUERY), step(ring, QUERY)
    assert all(layer.k_raw is None and MEANS not in layer.extra for layer in ring.layers)
    assert ring.nbytes() < slot.nbytes()
    memory = [(i, s) for i, s in enumerate(ring.slots) if s.kind != FRAME]
    assert memory
    nth: dict[str, int] = {}
    for i, s in memory:
        p = ring.phys[i]
        nth[s.kind] = nth.get(s.kind, -1) + 1
        freqs = ring.rope.freqs(torch.tensor([ring._rot[p]]), GRID)
        for layer in ring.layers:
            stored = layer.k[:, p * FT:(p + 1) * FT]
            raw, value = ring.policy.memory_value(layer, s.kind, nth[s.kind])  # [B, ft, H, D]
            assert raw.shape[1] == FT
            torch.testing.assert_close(stored, apply_rope(raw.float(), freqs).to(stored.dtype), atol=1e-6, rtol=0)
            torch.testing.assert_close(layer.v[:, p * FT:(p + 1) * FT], value.to(layer.v.dtype), atol=1e-6, rtol=0)
            assert not torch.allclose(stored[:, 0], stored[:, 1])  # one key per token, not a broadcast
    if name == "ema_sink":
        assert [s.kind for s in ring.slots[:3]] == [EMA_SINK] * 3 and ring.phys[:3] == [0, 1, 2]


@pytest.mark.parametrize(("name", "options"), PER_POSITION[::2])
def test_static_shapes_and_bit_exact_resume_on_the_ring(name, options):
    """Once full, every chunk attends the same prefix with one pass signature (one CUDA graph per
    pass), and a saved ring state continues bit for bit."""
    _, ring = pair(name, options)
    ring.static_writes = True
    cap = ring.policy.capacity_frames(CHUNK)
    signatures = set()
    for _ in range(12):
        plan = ring.begin_chunk(CHUNK)
        if plan.n_past + plan.n_frames == cap:
            signatures.add(ring.pass_signature())
        attend(ring, QUERY, plan.first_frame)
        ring.end_chunk()
    assert len(signatures) == 1 and None not in signatures
    tensors, data = ring.state_dict()
    _, resumed = pair(name, options)
    resumed.load_state_dict(tensors, data)
    resumed.static_writes = True
    for _ in range(4):
        for a, b in zip(step(ring, QUERY), step(resumed, QUERY), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize(("name", "options"), PER_POSITION[::2])
def test_a_slot_order_state_continues_on_the_ring(name, options):
    """Runs checkpointed while these policies ran in slot order: their unrotated keys are rotated at
    each slot's position on load, and the stream continues as it would have in slot order."""
    slot, ring = pair(name, options)
    for _ in range(8):
        step(slot, QUERY)
    ring.load_state_dict(*slot.state_dict())
    attends_alike(slot, ring, 5, what=f"{name} resumed from slot order")


@pytest.mark.parametrize("storage", ["slot order", "ring"])
def test_an_ema_sink_state_saved_before_the_sink_had_its_own_tensors_resumes(storage):
    """States written when the EMA-Sink lived only in the slot-order cache's first slots (no
    ``sink_k`` / ``sink_v``): the sink is rebuilt from those slots, before and after the first eviction."""
    for chunks in (2, 8):
        slot, ring = pair("ema_sink", {})
        for _ in range(chunks):
            step(slot, QUERY)
        tensors, data = slot.state_dict()
        legacy = {k: t for k, t in tensors.items() if ".extra.sink_" not in k}
        assert len(legacy) < len(tensors)
        target = ring if storage == "ring" else KVCache(make_policy("ema_sink", {}), geometry(), ring.rope)
        target.load_state_dict(legacy, data)
        attends_alike(slot, target, 5, what=f"{storage} after {chunks} chunks")
