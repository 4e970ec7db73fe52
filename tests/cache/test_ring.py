"""The ring-buffer cache attends exactly like the slot-order cache, without moves or unrotated keys."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memrope.cache import KVCache, make_policy
from memrope.cache.ring import RingKVCache, make_cache, runs
from memrope.rope import Rope3D, apply_rope

from .helpers import CHUNK, GRID, HEAD_DIM, HEADS, LAYERS, chunk_kv, geometry

FT = GRID[0] * GRID[1]
ATOL = 2e-5  # fp32 storage: shifts and means of means differ from a fresh rotation by rounding only


def pair(**options) -> tuple[KVCache, RingKVCache]:
    rope = Rope3D(HEAD_DIM)
    slot = KVCache(make_policy("memrope", options), geometry(), rope)
    ring = make_cache(make_policy("memrope", options), geometry(), rope)
    assert isinstance(ring, RingKVCache) and type(slot) is KVCache
    return slot, ring


def attend(cache: KVCache, query: torch.Tensor, commit_first: int | None) -> list[torch.Tensor]:
    """One read pass and (if ``commit_first`` is a frame index) the commit pass of every layer;
    returns the read pass's attention output per layer for ``query`` [1, Lq, H, D]."""
    outs = []
    for layer in range(LAYERS):
        junk = torch.randn(1, CHUNK * FT, HEADS, HEAD_DIM, generator=torch.Generator().manual_seed(layer))
        k, v = cache.update(layer, apply_rope(junk, cache.query_freqs), junk, k_raw=junk)
        q = apply_rope(query, cache.query_freqs)
        outs.append(F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)))
    if commit_first is not None:
        for layer in range(LAYERS):
            k, v = chunk_kv(commit_first, layer)
            cache.update(layer, apply_rope(k, cache.query_freqs), v, k_raw=k, commit=True)
    return outs


def step(cache: KVCache, query: torch.Tensor) -> list[torch.Tensor]:
    plan = cache.begin_chunk(CHUNK)
    outs = attend(cache, query, plan.first_frame)
    cache.end_chunk()
    return outs


QUERY = torch.randn(1, CHUNK * FT, HEADS, HEAD_DIM, generator=torch.Generator().manual_seed(7))


def switch(cache: KVCache, cut: bool = False) -> None:
    """The generator's prompt switch on the cache: the policy's response, then its recache passes."""
    sw = cache.switch(cut=cut)
    frames = list(sw.recache)
    for i in range(0, len(frames), CHUNK):
        group = tuple(frames[i:i + CHUNK])
        cache.begin_replay(group)
        for layer in range(LAYERS):
            k, v = chunk_kv(group[0], layer)
            k, v = k[:, : len(group) * FT], v[:, : len(group) * FT]
            cache.update(layer, apply_rope(k, cache.query_freqs), v, k_raw=k, commit=True)
        cache.end_chunk()


def attends_alike(slot: KVCache, ring: KVCache, chunks: int, switches: dict[int, bool] | None = None,
                  what: str = "") -> None:
    """Step both caches ``chunks`` times, with a prompt switch before chunk k (a cut where
    ``switches[k]``), and require the same attention every chunk and the same slots at the end."""
    for chunk in range(chunks):
        if switches and chunk in switches:
            for cache in (slot, ring):
                switch(cache, cut=switches[chunk])
        for a, b in zip(step(slot, QUERY), step(ring, QUERY), strict=True):
            torch.testing.assert_close(b, a, atol=ATOL, rtol=0, msg=f"{what} chunk {chunk}")
    assert ring.slots == slot.slots and ring.clock == slot.clock


@pytest.mark.parametrize("options", [
    {}, {"faithful": True}, {"memory": "none"}, {"memory": "long"}, {"sink": 0, "cache_size": 8},
    {"cache_size": 16, "sink": 2}, {"alpha_long": 0.3, "alpha_short": 0.7},
    {"reduction": "spatial"}, {"reduction": "spatial", "ema_adaptive": True},
    {"reduction": "spatial", "faithful": True}, {"reduction": "spatial", "ema_dtype": "cache", "memory": "short"},
])
def test_ring_attends_like_slot_order_over_a_long_stream(options):
    slot, ring = pair(**options)
    for chunk in range(14):
        for a, b in zip(step(slot, QUERY), step(ring, QUERY), strict=True):
            torch.testing.assert_close(b, a, atol=ATOL, rtol=0, msg=f"chunk {chunk}")
    assert ring.slots == slot.slots


def test_ring_keeps_no_unrotated_keys_and_constant_bytes():
    slot, ring = pair()
    sizes = set()
    for _ in range(12):
        step(ring, QUERY)
        sizes.add(ring.nbytes())
    assert len(sizes) == 1
    assert all(layer.k_raw is None for layer in ring.layers)
    assert slot.layers[0].k_raw is not None


def test_committed_frames_never_move_and_only_temporal_channels_change():
    """Steady state: a kept frame's spatial channels are bit-identical after the next chunk starts
    (no move, no re-rotation); only its temporal pairs are shifted."""
    _, ring = pair()
    for _ in range(6):
        step(ring, QUERY)
    t = ring.rope.split[0]
    before = ring.layers[0].k.clone()
    frames = {s.frame_idx: p for s, p in zip(ring.slots, ring.phys) if s.frame_idx is not None}
    plan = ring.begin_chunk(CHUNK)
    after = ring.layers[0].k
    kept = [s.frame_idx for s in plan.past if s.frame_idx is not None and s.frame_idx in frames]
    assert kept
    for f in kept:
        p = frames[f]
        span = slice(p * FT, (p + 1) * FT)
        assert torch.equal(after[:, span, :, t:], before[:, span, :, t:])
    moved = [f for f in kept if frames[f] >= ring.policy.config.sink + 2]
    assert any(not torch.equal(after[:, frames[f] * FT:(frames[f] + 1) * FT, :, :t],
                               before[:, frames[f] * FT:(frames[f] + 1) * FT, :, :t]) for f in moved)
    attend(ring, QUERY, plan.first_frame)
    ring.end_chunk()


def test_prompt_switch_and_recache_match_slot_order():
    attends_alike(*pair(), 12, {7: False})


def test_state_dict_resumes_the_ring_bit_for_bit():
    _, ring = pair()
    for _ in range(8):
        step(ring, QUERY)
    tensors, data = ring.state_dict()
    _, resumed = pair()
    resumed.load_state_dict(tensors, data)
    for _ in range(5):
        for a, b in zip(step(ring, QUERY), step(resumed, QUERY), strict=True):
            assert torch.equal(a, b)  # same physical layout, same key order: no rounding difference
    # a slot-order state (saved before the policy ran on the ring) continues on the ring
    slot, late = pair()
    for _ in range(8):
        step(slot, QUERY)
    late.load_state_dict(*slot.state_dict())
    attends_alike(slot, late, 5, what="resumed from slot order")
    tensors, data = slot.state_dict()
    with pytest.raises(ValueError, match="no unrotated keys"):
        late.load_state_dict({k: t for k, t in tensors.items() if not k.endswith("k_raw")}, data)


def test_make_cache_keeps_slot_order_where_unrotated_keys_are_needed():
    rope = Rope3D(HEAD_DIM)
    for name, options in (("deep_forcing", {}), ("full", {})):
        assert type(make_cache(make_policy(name, options), geometry(), rope)) is KVCache
    for name, options in (("memrope", {"reduction": "spatial"}), ("memrope_adaptive", {}), ("ema_sink", {})):
        assert type(make_cache(make_policy(name, options), geometry(), rope)) is RingKVCache, name


def test_runs_groups_consecutive_slots():
    assert runs([7, 5, 6, 9, 11, 10]) == [(5, 8), (9, 12)]
    assert runs([]) == []


def test_switch_keeping_slots_spread_over_the_ring_compacts_them_and_still_matches():
    """A switch that keeps frames lying anywhere in the ring (here: the sink and the four newest
    frames, dropping the memories) takes the rare compaction path; attention stays the same."""
    from memrope.cache.memrope import MemRoPE
    from memrope.cache.plan import SwitchPlan

    class KeepNewest(MemRoPE):
        def on_switch(self, slots, clock, cut):
            return SwitchPlan(keep=tuple(range(3)) + tuple(range(len(slots) - 4, len(slots))))

    rope = Rope3D(HEAD_DIM)
    slot = KVCache(KeepNewest(), geometry(), rope)
    ring = make_cache(KeepNewest(), geometry(), rope)
    for _ in range(7):
        step(slot, QUERY), step(ring, QUERY)
    slot.switch(), ring.switch()
    assert ring.phys != list(range(len(ring.phys)))
    for _ in range(6):
        for a, b in zip(step(slot, QUERY), step(ring, QUERY), strict=True):
            torch.testing.assert_close(b, a, atol=ATOL, rtol=0)


def ring_matches_slot_order_in_bf16(device: str, name: str = "memrope") -> None:
    """bf16 storage: each temporal shift rounds once more (and per-position folds read keys un-rotated
    from bf16), so the tolerance is bf16's."""
    import dataclasses

    rope = Rope3D(HEAD_DIM).to(device)
    geo = dataclasses.replace(geometry(), dtype=torch.bfloat16, device=device)
    slot = KVCache(make_policy(name, {}), geo, rope)
    ring = make_cache(make_policy(name, {}), geo, rope)
    query = QUERY.to(device, torch.bfloat16)

    def cuda_step(cache):
        plan = cache.begin_chunk(CHUNK)
        outs = []
        for layer in range(LAYERS):
            k, v = (t.to(device, torch.bfloat16) for t in chunk_kv(plan.first_frame, layer))
            k_ctx, v_ctx = cache.update(layer, apply_rope(k, cache.query_freqs), v, k_raw=k, commit=True)
            q = apply_rope(query, cache.query_freqs)
            outs.append(F.scaled_dot_product_attention(q.transpose(1, 2), k_ctx.transpose(1, 2),
                                                       v_ctx.transpose(1, 2)).float())
        cache.end_chunk()
        return outs

    for _ in range(12):
        for a, b in zip(cuda_step(slot), cuda_step(ring), strict=True):
            torch.testing.assert_close(b, a, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("name", ["memrope", "memrope_adaptive", "ema_sink"])
def test_ring_matches_slot_order_in_bf16_on_the_cpu(name):
    ring_matches_slot_order_in_bf16("cpu", name)


@pytest.mark.gpu
def test_ring_matches_slot_order_in_bf16_on_cuda():
    ring_matches_slot_order_in_bf16("cuda")


def test_states_saved_with_separate_key_and_value_means_still_resume():
    """Ring states written before keys and values shared one means tensor (``slot_mean_k`` and
    ``slot_mean_v``) load into the current layout and continue bit for bit."""
    _, ring = pair()
    for _ in range(8):
        step(ring, QUERY)
    tensors, data = ring.state_dict()
    legacy = {}
    for key, t in tensors.items():
        if key.endswith(".extra.slot_mean"):
            base = key.removesuffix("slot_mean")
            legacy[base + "slot_mean_k"], legacy[base + "slot_mean_v"] = t[:, :, 0], t[:, :, 1]
        else:
            legacy[key] = t
    _, resumed = pair()
    resumed.load_state_dict(legacy, data)
    for a, b in zip(step(ring, QUERY), step(resumed, QUERY), strict=True):
        assert torch.equal(a, b)
