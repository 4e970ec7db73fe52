"""MemRoPE: slot layout, bounded positions and memory tokens against closed forms."""

import pytest
import torch

from memrope.cache import make_policy
from memrope.cache.plan import Clock
from memrope.rope import apply_rope

from .helpers import CHUNK, GRID, LAYERS, frame_kv, make_cache, run_chunk

# The MemRoPE reference's cache (YoungRaeKimm/MemRoPE@b89bf5b wan/modules/causal_model.py), faithful mode, as
# seen by chunks 0..6 (labels, then positions).
FAITHFUL_LAYOUT = [
    ["cur0", "cur1", "cur2"],
    ["f0", "f1", "f2", "cur3", "cur4", "cur5"],
    ["f0", "f1", "f2", "f3", "f4", "f5", "cur6", "cur7", "cur8"],
    ["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8", "cur9", "cur10", "cur11"],
    ["f0", "f1", "f2", "long", "short", "f8", "f9", "f10", "f11", "cur12", "cur13", "cur14"],
    ["f0", "f1", "f2", "long", "short", "f11", "f12", "f13", "f14", "cur15", "cur16", "cur17"],
    ["f0", "f1", "f2", "long", "short", "f14", "f15", "f16", "f17", "cur18", "cur19", "cur20"],
]


def test_faithful_mode_reproduces_reference_slot_layout_for_seven_chunks():
    cache = make_cache("memrope", faithful=True)
    for chunk, expected in enumerate(FAITHFUL_LAYOUT):
        cache.begin_chunk(CHUNK)
        layout = cache.layout()
        assert [label for label, _ in layout] == expected, f"chunk {chunk}"
        assert [pos for _, pos in layout] == list(range(len(expected))), f"chunk {chunk}"
        plan = cache.plan
        if chunk == 4:  # frames 3, 4 overwritten, 5, 6, 7 folded
            assert plan.evicted == (3, 4, 5, 6, 7) and plan.dropped == (3, 4)
        cache.plan = None  # abandon the chunk: this test checks planning only
        run_chunk(cache)


def evictions(faithful: bool, chunks: int) -> list[list[int]]:
    """Frames folded into memory at each eviction, written out by hand from the layout above."""
    out = [[5, 6, 7] if faithful else [3, 4, 5, 6, 7]]
    out += [[3 * c - 7, 3 * c - 6, 3 * c - 5] for c in range(5, chunks)]
    return out


def closed_form_ema(means: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """m_N = (1-a)^(N-1) e_1 + sum_{n>=2} a (1-a)^(N-n) e_n."""
    n = len(means)
    total = (1 - alpha) ** (n - 1) * means[0]
    for i in range(1, n):
        total = total + alpha * (1 - alpha) ** (n - 1 - i) * means[i]
    return total


@pytest.mark.parametrize("reduction", ["global", "spatial"])
@pytest.mark.parametrize("faithful", [False, True])
def test_memory_tokens_equal_closed_form_ema(reduction, faithful):
    chunks = 12
    cache = make_cache("memrope", reduction=reduction, faithful=faithful)
    for _ in range(chunks):
        run_chunk(cache)
    folded = evictions(faithful, chunks)
    for layer in range(LAYERS):
        for part in (0, 1):  # K then V
            means = []
            for frames in folded:
                stack = torch.stack([frame_kv(f, layer)[part][0].double() for f in frames])  # [m, ft, H, D]
                means.append(stack.mean(dim=(0, 1))[None] if reduction == "global" else stack.mean(dim=0))
            for kind, alpha in (("long", 0.01), ("short", 0.1)):
                got = cache.layers[layer].extra[f"{kind}_{'kv'[part]}"][0].double()
                want = closed_form_ema(means, alpha)
                assert got.dtype == torch.float64 and torch.allclose(got, want, atol=1e-6), (kind, part)
    # the memory slots hold the memories; their keys are rotated at positions 3 (long) and 4 (short)
    layer = cache.layers[0]
    ft = GRID[0] * GRID[1]
    cache.begin_chunk(CHUNK)
    long_k = layer.extra["long_k"].expand(1, ft, -1, -1)
    assert torch.allclose(layer.k_raw[:, 3 * ft:4 * ft], long_k)
    freqs = cache.rope.freqs(torch.tensor([3]), GRID)
    assert torch.allclose(layer.k[:, 3 * ft:4 * ft], apply_rope(long_k, freqs), atol=1e-6)


def test_global_memory_is_one_vector_per_head_and_spatial_is_per_position():
    glob, spat = make_cache("memrope"), make_cache("memrope", reduction="spatial")
    for _ in range(6):
        run_chunk(glob), run_chunk(spat)
    ft = GRID[0] * GRID[1]
    assert glob.layers[0].extra["long_k"].shape[1] == 1
    assert spat.layers[0].extra["long_k"].shape[1] == ft
    slot = glob.layers[0].k_raw[0, 3 * ft:4 * ft]  # every position of the memory frame is the same
    assert torch.equal(slot, slot[:1].expand_as(slot))


@pytest.mark.parametrize("memory,kinds", [("none", []), ("long", ["long"]), ("short", ["short"]),
                                          ("both", ["long", "short"])])
def test_ablations_keep_cache_size_and_bound_positions(memory, kinds):
    cache = make_cache("memrope", memory=memory)
    for _ in range(8):
        run_chunk(cache)
    cache.begin_chunk(CHUNK)
    labels = [label for label, _ in cache.layout()]
    assert len(labels) == 12 and labels[:3] == ["f0", "f1", "f2"]
    assert labels[3:3 + len(kinds)] == kinds
    assert max(p for _, p in cache.layout()) == 11
    assert sorted(k.split("_")[0] for k in cache.layers[0].extra) == sorted(kinds * 2)


def test_no_memory_ablation_keeps_newest_frames_fifo():
    cache = make_cache("memrope", memory="none")
    for _ in range(8):
        run_chunk(cache)
    cache.begin_chunk(CHUNK)
    assert [label for label, _ in cache.layout()] == ["f0", "f1", "f2"] + [f"f{i}" for i in range(18, 24)] + \
        ["cur24", "cur25", "cur26"]


def test_bf16_accumulator_loses_updates_that_fp32_keeps():
    """Why ema_dtype=float32 is the default: at alpha 0.01 bf16 rounding swallows small steps."""
    from memrope.cache import CacheGeometry, KVCache, make_policy
    from memrope.rope import Rope3D

    LOW, HIGH = 1.0, 1.0 + 2**-7  # both exact in bf16

    def memory_after(ema_dtype):
        geo = CacheGeometry(num_layers=1, batch=1, heads=1, head_dim=6, grid=(1, 1), chunk_frames=1,
                            dtype=torch.bfloat16)
        cache = KVCache(make_policy("memrope", {"ema_dtype": ema_dtype, "cache_size": 4, "sink": 0}), geo, Rope3D(6))
        for i in range(300):
            cache.begin_chunk(1)
            k = torch.full((1, 1, 1, 6), LOW if i < 3 else HIGH, dtype=torch.bfloat16)
            cache.update(0, k, k, k_raw=k, commit=True)
            cache.end_chunk()
        return cache.layers[0].extra["long_k"].float().mean().item()

    # first eviction folds frames 0-2 (all LOW), then one frame of HIGH per chunk: 295 more folds
    exact = closed_form_ema([torch.tensor(LOW)] + [torch.tensor(HIGH)] * 295, 0.01).item()
    assert abs(memory_after("float32") - exact) < 1e-5
    # bf16 is stuck at LOW: each step of 0.01 * 2^-7 is below half a bf16 ulp at 1.0
    assert abs(memory_after("cache") - exact) > 0.5 * (HIGH - LOW)


def test_once_per_chunk_rotation_never_leaves_stale_keys():
    """Slots that neither moved nor changed position are not rotated again; every key must still
    equal its unrotated key rotated at the position the chunk plans for it."""
    cache = make_cache("memrope")
    ft = GRID[0] * GRID[1]
    for chunk in range(10):
        plan = cache.begin_chunk(CHUNK)
        if plan.n_past:
            freqs = cache.rope.freqs(torch.tensor(plan.past_pos), GRID)
            n = plan.n_past * ft
            for layer in cache.layers:
                assert torch.equal(layer.k[:, :n], apply_rope(layer.k_raw[:, :n], freqs)), chunk
        cache.plan = None
        run_chunk(cache)
    assert cache.stacked and cache.layers[1].k.data_ptr() == cache.stacked["k"][1].data_ptr()


def test_sink_gap_moves_everything_after_the_sink_back_once_the_cache_is_full():
    from memrope.cost_model import steady_plan

    plain = steady_plan(make_policy("memrope"))
    far = steady_plan(make_policy("memrope_far_sink"))
    assert far.past == plain.past and far.past_pos[:3] == plain.past_pos[:3] == (0, 1, 2)
    assert far.past_pos[3:] == tuple(p + 1000 for p in plain.past_pos[3:])
    assert far.query_pos == tuple(p + 1000 for p in plain.query_pos)
    first = make_policy("memrope_far_sink").plan((), Clock(), 3)  # still filling: the plain timeline
    assert first.query_pos == (0, 1, 2)
    with pytest.raises(ValueError, match="sink_gap"):
        make_policy("memrope", {"sink_gap": -1})
