"""Deep Forcing and infinity-RoPE against hand-computed expectations on tiny tensors."""

import torch

from memrope.cache import CacheGeometry, KVCache, make_policy
from memrope.rope import Rope3D, apply_rope

from .helpers import CHUNK, GRID, HEAD_DIM, HEADS, LAYERS, frame_kv, make_cache, run_chunk

FT = GRID[0] * GRID[1]


def test_infinity_rope_reindexes_window_with_queries_at_the_end():
    cache = make_cache("infinity_rope")  # window 6, sink 1
    for _ in range(5):
        run_chunk(cache)
    cache.begin_chunk(CHUNK)
    assert cache.layout() == [("f0", 0), ("f13", 1), ("f14", 2), ("cur15", 3), ("cur16", 4), ("cur17", 5)]
    # every pass sees the unrotated keys rotated at 0..n-1
    layer = cache.layers[0]
    raw = torch.cat([frame_kv(f, 0)[0] for f in (0, 13, 14)], 1)
    want = apply_rope(raw, cache.rope.freqs(torch.tensor([0, 1, 2]), GRID))
    assert torch.equal(layer.k[:, :3 * FT], want)


def test_kv_flush_leaves_exactly_the_sink_and_the_last_frames():
    for keep in (1, 2):
        cache = make_cache("infinity_rope", flush_keep=keep)
        for _ in range(4):
            run_chunk(cache)
        before = [s.frame_idx for s in cache.slots]
        sw = cache.switch(cut=False)
        assert [s.frame_idx for s in cache.slots] == [0] + before[-keep:]
        assert sw.action == "keep" and sw.recache == ()
        # the kept frames' values moved to the front slots
        assert torch.equal(cache.layers[1].v[:, FT:2 * FT], frame_kv(before[-keep], 1)[1])
        cache.begin_chunk(CHUNK)
        assert [p for _, p in cache.layout()] == list(range(1 + keep + CHUNK))


def test_rope_cut_jumps_by_the_configured_gap_and_stays_bounded():
    gap = 40
    cache = make_cache("infinity_rope", cut_gap=gap)
    for _ in range(3):
        run_chunk(cache)
    sw = cache.switch(cut=True)
    assert sw.pos_shift == gap
    cache.begin_chunk(CHUNK)
    assert cache.layout() == [("f0", 0), ("f8", 1), ("cur9", 2 + gap), ("cur10", 3 + gap), ("cur11", 4 + gap)]
    cache.plan = None  # abandon the planned chunk; run it for real below
    run_chunk(cache)
    largest = []
    for _ in range(6):
        largest.append(run_chunk(cache).max_frame_pos)
    assert max(largest) <= 5 + gap  # window - 1 + gap, however long it runs
    cache.begin_chunk(CHUNK)
    assert cache.layout()[0] == ("f0", 0)  # the sink survives the cut, before the gap


def brute_force_scores(cands, queries, head_dim):
    """Sum over every query, head and channel of q.k / sqrt(D), one candidate at a time."""
    out = torch.zeros(cands.shape[1], dtype=torch.float64)
    for j in range(cands.shape[1]):
        total = 0.0
        for q in queries:
            for i in range(q.shape[1]):
                total += float((q[0, i].double() * cands[0, j].double()).sum())
        out[j] = total / head_dim**0.5
    return out


def test_deep_forcing_top_c_equals_brute_force_ranking_and_timeline_is_contiguous():
    # window 9, sink 2, budget 6, recent 2 -> top-C 2 frames' worth of tokens
    opts = dict(window=9, sink=2, budget=6, recent=2)
    geo = CacheGeometry(num_layers=1, batch=1, heads=HEADS, head_dim=HEAD_DIM, grid=GRID, chunk_frames=CHUNK)
    rope = Rope3D(HEAD_DIM)
    cache = KVCache(make_policy("deep_forcing", opts), geo, rope)
    gen = torch.Generator().manual_seed(0)
    raw_k, q_of = {}, {}

    def commit(plan):
        k = torch.randn(1, CHUNK * FT, HEADS, HEAD_DIM, generator=gen)
        q = torch.randn(1, CHUNK * FT, HEADS, HEAD_DIM, generator=gen)
        v = torch.randn(1, CHUNK * FT, HEADS, HEAD_DIM, generator=gen)
        for j, f in enumerate(plan.frame_indices):
            raw_k[f], q_of[f] = k[:, j * FT:(j + 1) * FT], q[:, j * FT:(j + 1) * FT]
        cache.update(0, apply_rope(k, cache.query_freqs), v, k_raw=k, commit=True, q_raw=q)
        cache.end_chunk()

    for _ in range(2):  # frames 0-5 at positions 0-5: no compression yet
        commit(cache.begin_chunk(CHUNK))
    plan = cache.begin_chunk(CHUNK)  # 6 + 3 = 9 fits the window
    assert not plan.deferred
    commit(plan)
    plan = cache.begin_chunk(CHUNK)  # 9 + 3 > 9: compress at the first pass
    assert plan.deferred and plan.evicted == (2, 3, 4, 5, 6)
    q_cur = torch.randn(1, CHUNK * FT, HEADS, HEAD_DIM, generator=gen)
    # brute force: candidates are frames 2..6 rotated at their slots, queries at the old positions
    cands = torch.cat([apply_rope(raw_k[f], rope.freqs(torch.tensor([f]), GRID)) for f in range(2, 7)], 1)
    queries = [apply_rope(q_cur, rope.freqs(torch.tensor([9, 10, 11]), GRID))] + \
              [apply_rope(q_of[f], rope.freqs(torch.tensor([f]), GRID)) for f in (7, 8)]
    scores = brute_force_scores(cands, queries, HEAD_DIM)
    chosen = sorted(scores.topk(2 * FT).indices.tolist())
    assert cache.policy.scores(cache.layers[0], plan, geo, rope, q_cur)[0].topk(2 * FT).indices.sort().values.tolist() \
        == chosen
    junk = torch.zeros(1, CHUNK * FT, HEADS, HEAD_DIM)
    cache.update(0, junk, junk, k_raw=junk, q_raw=q_cur)  # first read pass: compression happens here
    assert cache.layout() == [("f0", 0), ("f1", 1), ("selected", 2), ("selected", 3), ("f7", 4), ("f8", 5),
                              ("cur9", 6), ("cur10", 7), ("cur11", 8)]
    k = cache.layers[0].k
    # selected tokens keep their spatial RoPE and sit at temporal positions 2 and 3, in order
    for j, c in enumerate(chosen):
        frame, token = 2 + c // FT, c % FT
        want = apply_rope(raw_k[frame], rope.freqs(torch.tensor([2 + j // FT]), GRID))[:, token]
        assert torch.allclose(k[:, (2 * FT) + j], want, atol=1e-5)
    # recent frames 7, 8 re-aligned to positions 4, 5; the sink untouched at 0, 1
    for frame, pos in ((7, 4), (8, 5), (0, 0), (1, 1)):
        want = apply_rope(raw_k[frame], rope.freqs(torch.tensor([pos]), GRID))
        assert torch.allclose(k[:, pos * FT:(pos + 1) * FT], want, atol=1e-5)


def test_deep_forcing_current_only_scoring_and_constant_size():
    cache = make_cache("deep_forcing", window=9, sink=2, budget=6, recent=2, score_queries="current")
    assert cache.layers[0].extra == {}
    sizes = set()
    for _ in range(10):
        plan = cache.begin_chunk(CHUNK)
        junk = torch.randn(1, CHUNK * FT, HEADS, HEAD_DIM)
        for layer in range(LAYERS):
            cache.update(layer, junk, junk, k_raw=junk, q_raw=junk)
            cache.update(layer, junk, junk, k_raw=junk, q_raw=junk, commit=True)
        cache.end_chunk()
        sizes.add(cache.nbytes())
        assert plan.max_frame_pos <= 8
    assert len(sizes) == 1
