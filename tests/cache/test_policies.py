"""Properties every policy must keep, checked with the tiny model and by hand-driven caches."""

import pytest
import torch

from memrope.cache import make_policy, policy_names
from memrope.cache.ring import make_cache as pick_cache
from memrope.generate import GenerationConfig, StreamingGenerator
from memrope.rope import Rope3D

from ..conftest import TINY_LATENT_HW
from .helpers import CHUNK, HEAD_DIM, LAYERS, geometry, make_cache, run_chunk


def generator(model, text, policy, seed=0, **options):
    config = GenerationConfig(latent_hw=TINY_LATENT_HW, chunk_frames=CHUNK, seed=seed)
    return StreamingGenerator(model, make_policy(policy, options), text, config)


BOUNDED_ALL = [name for name in policy_names() if make_policy(name).capacity_frames(CHUNK) is not None]


@pytest.mark.parametrize("policy", BOUNDED_ALL)
def test_bounded_cache_bytes_and_storage_constant_over_100_chunks(policy):
    """Every bounded policy and preset (Deep Forcing and infinity-RoPE included), on the storage the
    generator picks for it (``make_cache``: ring or slot order), driven by hand with known K/V: full
    from its capacity on, never grown, never reallocated. (The sizes the CLI reports are
    ``test_cli_policies``'s; this needs no model, so 100 chunks cost milliseconds.)"""
    cache = pick_cache(make_policy(policy), geometry(), Rope3D(HEAD_DIM, max_positions=4096))
    capacity = cache.policy.capacity_frames(CHUNK)
    sizes, pointers, context = [], [], []
    for _ in range(100):
        plan = run_chunk(cache)
        sizes.append(cache.nbytes())
        pointers.append([t.data_ptr() for layer in cache.layers for t in layer.tensors()])
        context.append(plan.n_past + plan.n_frames)
    # filled to its capacity, never past it (Deep Forcing compresses below it and refills)
    assert max(context) == capacity
    assert len(set(sizes)) == 1  # never grows
    assert all(p == pointers[0] for p in pointers)  # never reallocated either


def test_full_cache_grows_with_the_video(tiny_model, tiny_text):
    gen = generator(tiny_model, tiny_text, "full")
    frames = [r.stats["cache_frames"] for r in gen.stream(10)]
    assert frames == [CHUNK * (i + 1) for i in range(10)]


def test_memrope_positions_bounded_while_absolute_policies_grow(tiny_model, tiny_text):
    n = 100
    largest = {p: [r.stats["max_frame_pos"] for r in generator(tiny_model, tiny_text, p).stream(n)]
               for p in ("memrope", "sliding_window", "attention_sink")}
    assert max(largest["memrope"]) == 11  # cache size - 1
    for policy in ("sliding_window", "attention_sink"):
        assert largest[policy] == [CHUNK * (i + 1) - 1 for i in range(n)]  # the newest frame's index


def test_full_equals_sliding_window_at_least_as_long_as_the_video(tiny_model, tiny_text):
    chunks = 8
    full = [r.latents for r in generator(tiny_model, tiny_text, "full").stream(chunks)]
    window = [r.latents for r in generator(tiny_model, tiny_text, "sliding_window", window=CHUNK * chunks)
              .stream(chunks)]
    assert all(torch.equal(a, b) for a, b in zip(full, window))
    short = [r.latents for r in generator(tiny_model, tiny_text, "sliding_window", window=6).stream(chunks)]
    assert not torch.equal(full[-1], short[-1])  # and a shorter window does change the video


def test_memrope_equals_full_until_its_first_eviction(tiny_model, tiny_text):
    full = [r.latents for r in generator(tiny_model, tiny_text, "full").stream(6)]
    mem = [r.latents for r in generator(tiny_model, tiny_text, "memrope").stream(6)]
    assert all(torch.equal(full[i], mem[i]) for i in range(4))  # 12 frames fit: identical
    assert not torch.equal(full[4], mem[4])  # chunk 4 reads memory tokens


def test_unrotated_cache_rotated_at_read_equals_rotated_at_write():
    full, mem = make_cache("full"), make_cache("memrope")
    for _ in range(4):
        run_chunk(full), run_chunk(mem)
    full.begin_chunk(CHUNK), mem.begin_chunk(CHUNK)  # chunk 4: memrope evicts, full does not
    ft = 6
    # sink frames 0-2 sit at the same positions in both: identical attention-ready keys
    for a, b in zip(full.layers, mem.layers):
        assert torch.equal(a.k[:, :3 * ft], b.k[:, :3 * ft])
        assert torch.equal(a.v[:, :3 * ft], b.v[:, :3 * ft])
    # before eviction (chunk 3 of fresh caches) every slot coincides
    full2, mem2 = make_cache("full"), make_cache("memrope")
    for _ in range(3):
        run_chunk(full2), run_chunk(mem2)
    full2.begin_chunk(CHUNK), mem2.begin_chunk(CHUNK)
    for a, b in zip(full2.layers, mem2.layers):
        assert torch.equal(a.k[:, :9 * ft], b.k[:, :9 * ft])


@pytest.mark.parametrize("policy", ["full", "sliding_window", "attention_sink", "memrope"])
def test_read_passes_never_change_the_cache_and_each_layer_commits_once(tiny_model, tiny_text, policy):
    gen = generator(tiny_model, tiny_text, policy)
    commits = []
    original = gen.cache.update

    def counting_update(layer_idx, k_rot, v, k_raw=None, commit=False, **kw):
        if not commit:  # a read pass: the persistent state must be what it was before the chunk
            for before, after in zip(snapshot, gen.cache.persistent_state()):
                assert before.keys() == after.keys()
                assert all(torch.equal(before[k], after[k]) for k in before)
        else:
            commits.append((gen.cache.plan.chunk_index, layer_idx))
        return original(layer_idx, k_rot, v, k_raw=k_raw, commit=commit, **kw)

    gen.cache.update = counting_update
    real_begin = gen.cache.begin_chunk

    def begin(n):
        nonlocal snapshot
        plan = real_begin(n)
        snapshot = gen.cache.persistent_state()
        return plan

    snapshot = None
    gen.cache.begin_chunk = begin
    chunks = 7
    for _ in gen.stream(chunks):
        pass
    assert sorted(commits) == [(c, layer) for c in range(chunks) for layer in range(LAYERS)]


def test_commit_protocol_errors():
    cache = make_cache("memrope")
    with pytest.raises(RuntimeError, match="begin_chunk"):
        cache.end_chunk()
    plan = cache.begin_chunk(CHUNK)
    with pytest.raises(RuntimeError, match="a chunk is in progress"):
        cache.begin_chunk(CHUNK)
    k = torch.zeros(1, CHUNK * 6, 2, 12)
    cache.update(0, k, k, k_raw=k, commit=True)
    with pytest.raises(RuntimeError, match="committed twice"):
        cache.update(0, k, k, k_raw=k, commit=True)
    with pytest.raises(RuntimeError, match="without a commit from layers \\[1\\]"):
        cache.end_chunk()
    assert plan.chunk_index == 0


def test_window_and_sink_keep_the_right_frames():
    window, sink = make_cache("sliding_window", window=9), make_cache("attention_sink", window=9, sink=3)
    for _ in range(5):
        run_chunk(window), run_chunk(sink)
    window.begin_chunk(CHUNK), sink.begin_chunk(CHUNK)
    assert window.layout() == [(f"f{i}", i) for i in range(9, 15)] + [(f"cur{i}", i) for i in range(15, 18)]
    assert sink.layout() == [("f0", 0), ("f1", 1), ("f2", 2)] + [(f"f{i}", i) for i in (12, 13, 14)] + \
        [(f"cur{i}", i) for i in range(15, 18)]


@pytest.mark.parametrize("name,options,message", [
    ("no_such_policy", {}, "unknown cache policy 'no_such_policy'; choose one of"),
    ("memrope", {"cache_sise": 12}, "unknown option\\(s\\) cache_sise; known options"),
    ("memrope", {"alpha_long": "2"}, "alpha_long must be in \\(0, 1\\]"),
    ("memrope", {"reduction": "median"}, "reduction must be one of"),
    ("memrope", {"faithful": "maybe"}, "faithful='maybe' is not a valid bool"),
    ("sliding_window", {"window": "x"}, "window='x' is not a valid int"),
    ("attention_sink", {"window": 3, "sink": 3}, "must exceed sink"),
    ("attention_sink", {"rope": "sideways"}, "rope must be one of \\['absolute', 'relative'\\]"),
    ("memrope", {"ema_adaptive": "true"}, "ema_adaptive needs per-position memory; set reduction=spatial"),
    ("memrope", {"switch": "forget"}, "switch must be one of"),
    ("deep_forcing", {"max_reuse": "-1"}, "sink, recent and max_reuse must be >= 0"),
    ("deep_forcing", {"budget": 30}, "budget \\(30\\) must not exceed window \\(21\\)"),
    ("deep_forcing", {"budget": 12}, "budget \\(12\\) must be >= sink \\(10\\) \\+ recent \\(4\\)"),
    ("infinity_rope", {"cut_position": 2}, "cut_position \\(2\\) must lie after the kept frames"),
    ("lol", {"jitter": 1.5}, "jitter must be in \\[0, 1\\)"),
    ("ema_sink", {"alpha": 2}, "alpha must be in \\[0, 1\\]"),
    ("ema_sink", {"window": 3}, "window \\(3\\) must exceed sink \\(3\\)"),
])
def test_bad_policy_options_say_what_to_change(name, options, message):
    with pytest.raises(ValueError, match=message):
        make_policy(name, options)


@pytest.mark.parametrize("name,options,message", [
    ("memrope", {"cache_size": 6}, "cache_size \\(6\\) must hold sink \\(3\\) \\+ 2 memory slot"),
    ("sliding_window", {"window": 2}, "window \\(2\\) must hold at least one chunk"),
    ("attention_sink", {"window": 5, "sink": 3}, "must hold one chunk"),
    ("ema_sink", {"sink": 2}, "the sink \\(2\\) must be one chunk \\(3 frames\\)"),
    ("ema_sink", {"window": 10}, "the window \\(10\\) whole chunks"),
    ("deep_forcing", {"recent": 8, "budget": 20}, "recent \\(8\\) must lie between one and two chunks"),
    ("lol", {"window": 5}, "must hold one chunk"),
])
def test_sizes_that_cannot_hold_a_chunk_are_rejected(name, options, message):
    with pytest.raises(ValueError, match=message):
        make_cache(name, **options)


def test_every_registered_policy_builds_with_defaults():
    for name in policy_names():
        cache = make_cache(name)
        run_chunk(cache)


def test_every_policy_and_preset_names_its_paper_and_the_code_it_follows(capsys):
    from memrope.cache.registry import PRESETS, describe_policies
    from memrope.cli import main

    rows = {row["name"]: row for row in describe_policies()}
    assert set(rows) == set(policy_names())
    for name, row in rows.items():
        assert row["paper"] and row["source"], name
        if name in PRESETS:
            assert row["source"].startswith(f"preset of {PRESETS[name].base}: "), name
    assert "paper only" in rows["lol"]["source"]
    assert main(["policies"]) == 0
    out = capsys.readouterr().out
    assert "code: Nizben/Spectral_C@ea9961a" in out and "code: yesiltepe-hidir/infinity-rope@63d7b84" in out
