"""Prompt switches happen at exactly the scheduled chunk, with each policy's own cache response."""

import pytest
import torch

from memrope.cache import KVCache, make_policy
from memrope.generate import GenerationConfig, StreamingGenerator

from .conftest import TINY_LATENT_HW

SWITCH_AT, CUT_AT, CHUNKS = 5, 9, 14


def texts(model, n):
    gen = torch.Generator().manual_seed(5)
    cfg = model.config
    return [model.encode_text(torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen)) for _ in range(n)]


def run(model, policy, events=True):
    t = texts(model, 3)
    gen = StreamingGenerator(model, make_policy(policy), t[0], GenerationConfig(latent_hw=TINY_LATENT_HW))
    seen_text, switch_calls = [], []
    real_next, real_switch = gen._denoise, gen.cache.switch

    def denoise():
        seen_text.append(next(i for i, x in enumerate(t) if x is gen.text))
        return real_next()

    def switch(cut=False):
        switch_calls.append((gen.cache.clock.chunks, cut))
        return real_switch(cut=cut)

    gen._denoise, gen.cache.switch = denoise, switch
    switches = {SWITCH_AT: (t[1], False), CUT_AT: (t[2], True)} if events else {}
    results = list(gen.stream(CHUNKS, switches))
    return gen, results, seen_text, switch_calls


@pytest.mark.parametrize("policy,action", [
    ("sliding_window", "recache"), ("attention_sink", "recache"), ("memrope", "recache"),
    ("infinity_rope", "keep"), ("deep_forcing", "keep"), ("full", "keep"),
])
def test_text_and_cache_response_change_at_exactly_the_scheduled_chunks(tiny_model, policy, action):
    gen, results, seen_text, calls = run(tiny_model, policy)
    assert seen_text == [0] * SWITCH_AT + [1] * (CUT_AT - SWITCH_AT) + [2] * (CHUNKS - CUT_AT)
    assert [r.stats["prompt_index"] for r in results] == seen_text  # what the chunk log records
    assert calls == [(SWITCH_AT, False), (CUT_AT, True)]
    events = {r.index: r.stats["switch"] for r in results if "switch" in r.stats}
    assert sorted(events) == [SWITCH_AT, CUT_AT]
    assert events[SWITCH_AT]["action"] == action
    if policy == "infinity_rope":
        assert events[CUT_AT]["action"] == "cut" and events[CUT_AT]["pos_shift"] == 45 - 3  # to cut_position
    if gen.cache.bounded:
        assert len({r.stats["cache_bytes"] for r in results}) == 1  # no cache grows


def slot_order(gen: StreamingGenerator) -> StreamingGenerator:
    """The generator on slot-order storage, whose layout the test below reads (attention_sink runs on the
    ring by default; tests/cache/test_window_ring.py holds the ring equal to slot order through switches)."""
    gen.cache = KVCache(gen.cache.policy, gen.cache.geometry, gen.cache.rope)
    return gen


def test_recache_rebuilds_kv_from_the_new_prompt(tiny_model):
    """After a recache, the cached K/V equal one t=0 pass of the re-encoded frames' latents under the
    new prompt over a cache that holds only the sink (same positions): the sink alone keeps the old
    prompt, and the re-encoded frames attend each other (one pass, LongLive's recache)."""
    t = texts(tiny_model, 2)
    config = GenerationConfig(latent_hw=TINY_LATENT_HW)
    gen = slot_order(StreamingGenerator(tiny_model, make_policy("attention_sink"), t[0], config))
    for _ in range(6):
        gen.next_chunk()
    sw = gen.switch_prompt(t[1])
    assert sw["kept"] == 3 and sw["recached"] == 9
    frames = [s.frame_idx for s in gen.cache.slots]
    assert frames == [0, 1, 2] + list(range(9, 18))
    # Recompute the recached frames independently: a fresh cache that holds the same sink K/V,
    # replaying the same latents under the new prompt, must match bit for bit.
    ref = slot_order(StreamingGenerator(tiny_model, make_policy("attention_sink"), t[1], config))
    ref.cache.slots = gen.cache.slots[:3]
    for layer_ref, layer in zip(ref.cache.layers, gen.cache.layers):
        layer_ref.k[:, :12] = layer.k[:, :12]
        layer_ref.v[:, :12] = layer.v[:, :12]
    group = tuple(range(9, 18))
    ref.cache.begin_replay(group)
    tiny_model(torch.cat([gen._latents[f] for f in group], 2), torch.zeros(1), t[1], ref.cache, commit=True)
    ref.cache.end_chunk()
    for a, b in zip(ref.cache.layers, gen.cache.layers):
        assert torch.equal(a.k[:, :48], b.k[:, :48]) and torch.equal(a.v[:, :48], b.v[:, :48])


def test_no_switch_no_event(tiny_model):
    _, results, seen, calls = run(tiny_model, "memrope", events=False)
    assert calls == [] and set(seen) == {0} and not any("switch" in r.stats for r in results)
