"""The comparison methods' mechanisms against closed forms and brute force on tiny tensors."""

import pytest
import torch

from memrope.cache import CacheGeometry, KVCache, make_policy
from memrope.cache.ema import adaptive_alpha
from memrope.generate import GenerationConfig, StreamingGenerator, json_roundtrip
from memrope.rope import Rope3D, apply_rope

from ..conftest import TINY_LATENT_HW
from .helpers import CHUNK, GRID, HEAD_DIM, HEADS, frame_kv, make_cache, run_chunk

FT = GRID[0] * GRID[1]


def test_infinity_rope_reindexes_window_with_queries_at_the_end():
    cache = make_cache("infinity_rope")  # window 6, sink 1
    for _ in range(5):
        run_chunk(cache)
    cache.begin_chunk(CHUNK)
    assert cache.layout() == [("f0", 0), ("f13", 1), ("f14", 2), ("cur15", 3), ("cur16", 4), ("cur17", 5)]
    # every pass sees the unrotated keys rotated at 0..n-1
    raw = torch.cat([frame_kv(f, 0)[0] for f in (0, 13, 14)], 1)
    want = apply_rope(raw, cache.rope.freqs(torch.tensor([0, 1, 2]), GRID))
    assert torch.equal(cache.layers[0].k[:, :3 * FT], want)


def test_kv_flush_keeps_the_sink_and_the_last_frames_and_what_exists_before_the_window_fills():
    for keep in (1, 2):
        cache = make_cache("infinity_rope", flush_keep=keep)
        for _ in range(4):
            run_chunk(cache)
        before = [s.frame_idx for s in cache.slots]
        sw = cache.switch(cut=False)
        assert [s.frame_idx for s in cache.slots] == [0] + before[-keep:]
        assert sw.action == "keep" and sw.recache == ()
        assert torch.equal(cache.layers[1].v[:, FT:2 * FT], frame_kv(before[-keep], 1)[1])  # moved to the front
    early = make_cache("infinity_rope")
    run_chunk(early)
    early.switch()
    assert [s.frame_idx for s in early.slots] == [0, 1, 2]  # the release would copy empty buffer slots


def deep_forcing_cache(**options) -> tuple[KVCache, Rope3D, CacheGeometry]:
    geo = CacheGeometry(num_layers=1, batch=1, heads=HEADS, head_dim=HEAD_DIM, grid=GRID, chunk_frames=CHUNK)
    rope = Rope3D(HEAD_DIM)
    return KVCache(make_policy("deep_forcing", options), geo, rope), rope, geo


def test_deep_forcing_scores_are_the_summed_logits_of_the_last_recent_queries():
    """Brute force: every candidate's score is the sum over the last 4 frames' queries (the previous
    commit's last frame at its position, the chunk's at theirs), heads and channels, / (sqrt(D) H)."""
    cache, rope, geo = deep_forcing_cache()
    gen = torch.Generator().manual_seed(0)
    raw_k, q_of = {}, {}
    for _ in range(7):  # 21 frames: the next chunk compresses
        plan = cache.begin_chunk(CHUNK)
        k, q, v = (torch.randn(1, CHUNK * FT, HEADS, HEAD_DIM, generator=gen) for _ in range(3))
        for j, f in enumerate(plan.frame_indices):
            raw_k[f], q_of[f] = k[:, j * FT:(j + 1) * FT], q[:, j * FT:(j + 1) * FT]
        cache.update(0, apply_rope(k, cache.query_freqs), v, commit=True, q_raw=q)
        cache.end_chunk()
    plan = cache.begin_chunk(CHUNK)
    assert plan.deferred and plan.evicted == tuple(range(10, 20))  # between the sink and frame 20
    q_cur = torch.randn(1, CHUNK * FT, HEADS, HEAD_DIM, generator=gen)
    rot = lambda x, f: apply_rope(x, rope.freqs(torch.tensor(f), GRID)).double()  # noqa: E731
    queries = [rot(q_cur, [21, 22, 23]), rot(q_of[20], [20])]
    want = torch.zeros(10 * FT, dtype=torch.float64)
    for c, f in enumerate(range(10, 20)):
        key = rot(raw_k[f], [f])[0]  # [FT, H, D]
        for t in range(FT):
            want[c * FT + t] = sum(float((q[0] * key[t]).sum()) for q in queries)
    want /= HEAD_DIM**0.5 * HEADS
    got = cache.policy.scores(cache.layers[0], plan, geo, rope, q_cur)[0]
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)


def test_deep_forcing_compresses_every_other_chunk_keeps_positions_and_moves_the_sink(tiny_model, tiny_text):
    gen = StreamingGenerator(tiny_model, make_policy("deep_forcing"), tiny_text,
                             GenerationConfig(latent_hw=TINY_LATENT_HW))
    frames = [r.stats["cache_frames"] for r in gen.stream(14)]
    assert frames == [3, 6, 9, 12, 15, 18, 21, 16, 19, 16, 19, 16, 19, 16]
    assert len({gen.cache.nbytes()}) == 1
    # The sink's stored keys equal a fresh rotation of its raw keys at its planned positions.
    cache = make_cache("deep_forcing", compression=False, sink=14)
    rope = cache.rope
    for _ in range(9):
        run_chunk(cache)
    plan = cache.begin_chunk(CHUNK)
    assert plan.past_pos[:14] == tuple(range(6, 20))  # t - window = 27 - 21
    raw = torch.cat([frame_kv(f, 0)[0] for f in range(14)], 1)
    torch.testing.assert_close(cache.layers[0].k[:, :14 * FT], apply_rope(raw, rope.freqs(torch.arange(6, 20), GRID)),
                               atol=1e-5, rtol=0)


def test_deep_forcing_excludes_a_token_once_it_was_selected_max_reuse_times():
    cache, rope, geo = deep_forcing_cache(max_reuse=2)
    q = torch.zeros(1, CHUNK * FT, HEADS, HEAD_DIM)
    q[..., 2] = 1.0  # queries that read channel 2 only: the slowest temporal pair (0.01 rad per frame)
    big = torch.zeros(1, CHUNK * FT, HEADS, HEAD_DIM)
    big[:, 0, :, 2] = 100.0  # frame 12's first token: the best candidate by far
    kept = []
    for k in range(16):
        plan = cache.begin_chunk(CHUNK)
        junk = torch.randn(1, CHUNK * FT, HEADS, HEAD_DIM, generator=torch.Generator().manual_seed(k)) * 0.01
        keys = big if plan.first_frame == 12 else junk
        if plan.deferred:
            cache.update(0, apply_rope(junk, cache.query_freqs), junk, q_raw=q)
            top = cache.layers[0].v[:, 10 * FT:12 * FT]  # the top-C slots
            kept.append(bool((top[..., 2] == 100.0).any()))
        cache.update(0, apply_rope(keys, cache.query_freqs), keys, commit=True, q_raw=q)
        cache.end_chunk()
    assert kept == [True, True, False, False, False]  # compressions at chunks 7, 9, 11, 13, 15: twice, then out


def test_lol_heads_get_their_own_temporal_frequencies_and_zero_jitter_is_the_attention_sink(tiny_model, tiny_text):
    rope = Rope3D(HEAD_DIM)
    cache = make_cache("lol")
    freqs = cache.policy.rope_freqs(rope, torch.tensor([5]), cache.geometry)
    assert freqs.cos.shape == (FT, HEADS, HEAD_DIM // 2)
    t = rope.split[0] // 2
    assert len({tuple(freqs.cos[0, h, :t].tolist()) for h in range(HEADS)}) == HEADS  # temporal: per head
    assert torch.equal(freqs.cos[:, 0, t:], freqs.cos[:, 1, t:])  # spatial: shared
    config = GenerationConfig(latent_hw=TINY_LATENT_HW)
    zero = StreamingGenerator(tiny_model, make_policy("lol", {"jitter": 0.0}), tiny_text, config)
    sink = StreamingGenerator(tiny_model, make_policy("attention_sink"), tiny_text, config)
    lol = StreamingGenerator(tiny_model, make_policy("lol"), tiny_text, config)
    for a, b in zip(zero.stream(8), sink.stream(8), strict=True):
        torch.testing.assert_close(a.latents, b.latents, atol=1e-6, rtol=0)
    assert not torch.allclose(list(lol.stream(8))[-1].latents, b.latents)


def test_ema_sink_is_the_closed_form_average_of_every_evicted_chunk():
    alpha = 0.6
    cache = make_cache("ema_sink", alpha=alpha)
    for _ in range(7):
        run_chunk(cache)
    # evictions at chunks 3..6 fold frames 3-5, 6-8, 9-11, 12-14 into sink frames 0-2, token by token
    for j in range(3):
        want_k, want_v = frame_kv(j, 1)
        for first in (3, 6, 9, 12):
            k, v = frame_kv(first + j, 1)
            want_k, want_v = alpha * want_k + (1 - alpha) * k, alpha * want_v + (1 - alpha) * v
        layer = cache.layers[1]
        torch.testing.assert_close(layer.k_raw[:, j * FT:(j + 1) * FT], want_k, atol=1e-6, rtol=0)
        torch.testing.assert_close(layer.v[:, j * FT:(j + 1) * FT], want_v, atol=1e-6, rtol=0)


def test_adaptive_alpha_spans_a_tenth_to_five_times_alpha_short_with_the_motion():
    memory = torch.zeros(1, 4, 2, 3)
    evicted = torch.zeros(1, 4, 2, 3)
    evicted[0, 1] = 1.0  # position 1 moves most, position 3 half as much, 0 and 2 not at all
    evicted[0, 3] = 0.5
    alpha = adaptive_alpha(evicted, memory, 0.1)[0, :, 0, 0]
    torch.testing.assert_close(alpha, torch.tensor([0.01, 0.5, 0.01, 0.01 + 0.5 * 0.49]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("policy", ["deep_forcing", "deep_forcing_sink_only", "ema_sink", "lol", "infinity_rope",
                                    "attention_sink_infinite", "memrope_adaptive", "memrope_switch_reset"])
def test_a_saved_stream_resumes_bit_for_bit(tiny_model, tiny_text, policy):
    """Mid-compression-cycle, with a RoPE cut pending: the state (slots with their shifts, reuse counts,
    kept queries, EMA sink, the clock's cut offset) is complete."""
    config = GenerationConfig(latent_hw=TINY_LATENT_HW)
    gen = StreamingGenerator(tiny_model, make_policy(policy), tiny_text, config)
    list(gen.stream(10))
    gen.switch_prompt(tiny_text, cut=True)
    tensors, data = gen.state_dict()
    resumed = StreamingGenerator(tiny_model, make_policy(policy), tiny_text, config)
    resumed.load_state_dict(tensors, json_roundtrip(data))  # as a run directory stores it
    for a, b in zip(gen.stream(16), resumed.stream(16), strict=True):
        assert torch.equal(a.latents, b.latents) and a.stats["query_pos"] == b.stats["query_pos"]
