"""What each policy's planner keeps, and where it shows it, for the first 12 chunks: tables written
out by hand from the released code (each policy's docstring cites it), checked against the plans."""

from __future__ import annotations

import pytest

from .helpers import CHUNK, make_cache, run_chunk

SEL = "selected"
EMA = "ema_sink"


def frames(a: int, b: int) -> list[str]:
    """Labels of frames a..b (inclusive)."""
    return [f"f{i}" for i in range(a, b + 1)]


def span(a: int, b: int) -> list[int]:
    return list(range(a, b + 1))


def absolute(past: list[int], k: int) -> tuple[list[str], list[int], list[int]]:
    """Frames ``past`` at their own indices, chunk k's queries at theirs."""
    return [f"f{i}" for i in past], list(past), span(3 * k, 3 * k + 2)


def relative(labels: list[str], k: int | None = None) -> tuple[list[str], list[int], list[int]]:
    """Slots at their index in the window, queries right after them."""
    n = len(labels)
    return labels, list(range(n)), span(n, n + 2)


FILL = [absolute(span(0, 3 * k - 1), k) for k in range(4)]  # chunks 0-3: 12 frames fit every window here

TABLES = {
    "full": [absolute(span(0, 3 * k - 1), k) for k in range(12)],
    # Self-Forcing rolling window of 12: the last 9 frames before the chunk.
    "sliding_window": FILL + [absolute(span(3 * k - 9, 3 * k - 1), k) for k in range(4, 12)],
    # LongLive frame sink: frames 0-2 plus the last 6.
    "attention_sink": FILL + [absolute([0, 1, 2] + span(3 * k - 6, 3 * k - 1), k) for k in range(4, 12)],
    "lol": FILL + [absolute([0, 1, 2] + span(3 * k - 6, 3 * k - 1), k) for k in range(4, 12)],
    "attention_sink_infinite": [relative(frames(0, 3 * k - 1)) for k in range(4)]
    + [relative(frames(0, 2) + frames(3 * k - 6, 3 * k - 1)) for k in range(4, 12)],
    # infinity-RoPE: window 6 with a 1-frame sink, re-indexed 0..5.
    "infinity_rope": [relative([]), relative(frames(0, 2))]
    + [relative(["f0", f"f{3 * k - 2}", f"f{3 * k - 1}"]) for k in range(2, 12)],
    # MemRoPE: [sink 3 | long | short | recent 4], queries at 9-11 once full.
    "memrope": [relative(frames(0, 3 * k - 1)) for k in range(4)]
    + [relative(frames(0, 2) + ["long", "short"] + frames(3 * k - 4, 3 * k - 1)) for k in range(4, 12)],
    # Reward Forcing: window 9, sink 3; from chunk 3 on the sink slots hold the EMA of evicted frames.
    "ema_sink": [relative(frames(0, 3 * k - 1)) for k in range(3)]
    + [relative([EMA] * 3 + frames(3 * k - 3, 3 * k - 1)) for k in range(3, 12)],
    # Deep Forcing, compression: full attention up to 21 frames; chunk 7 compresses to sink 10 (moved
    # to t - 16 = 5..14) + 2 frames' worth of selected tokens (their own positions) + frame 20; chunk 8
    # appends; chunk 9 compresses again (sink at 11..20, recent frame 26); and so on.
    "deep_forcing": [absolute(span(0, 3 * k - 1), k) for k in range(7)] + [
        (frames(0, 9) + [SEL, SEL, "f20"], span(5, 14) + [-1, -1, 20], span(21, 23)),
        (frames(0, 9) + [SEL, SEL] + frames(20, 23), span(5, 14) + [-1, -1] + span(20, 23), span(24, 26)),
        (frames(0, 9) + [SEL, SEL, "f26"], span(11, 20) + [-1, -1, 26], span(27, 29)),
        (frames(0, 9) + [SEL, SEL] + frames(26, 29), span(11, 20) + [-1, -1] + span(26, 29), span(30, 32)),
        (frames(0, 9) + [SEL, SEL, "f32"], span(17, 26) + [-1, -1, 32], span(33, 35)),
    ],
    # Deep Sink only, sink 14: a rolling window of 21 whose sink sits at t - 21 from the first roll on.
    "deep_forcing_sink_only": [absolute(span(0, 3 * k - 1), k) for k in range(7)] + [
        (frames(0, 13) + frames(17, 20), span(0, 13) + span(17, 20), span(21, 23)),
        (frames(0, 13) + frames(20, 23), span(3, 16) + span(20, 23), span(24, 26)),
        (frames(0, 13) + frames(23, 26), span(6, 19) + span(23, 26), span(27, 29)),
        (frames(0, 13) + frames(26, 29), span(9, 22) + span(26, 29), span(30, 32)),
        (frames(0, 13) + frames(29, 32), span(12, 25) + span(29, 32), span(33, 35)),
    ],
}


def layout_rows(cache, chunks: int) -> list[tuple[list[str], list[int], list[int]]]:
    rows = []
    for _ in range(chunks):
        plan = cache.begin_chunk(CHUNK)
        past = cache.layout()[: plan.n_past]
        rows.append(([label for label, _ in past], [pos for _, pos in past], list(plan.query_pos)))
        cache.plan = None  # abandon the planned chunk (planning only), then run it for real
        run_chunk(cache)
    return rows


@pytest.mark.parametrize("policy", sorted(TABLES))
def test_first_12_chunks_keep_the_frames_and_positions_of_the_release(policy):
    assert len(TABLES[policy]) == 12
    for k, (got, want) in enumerate(zip(layout_rows(make_cache(policy), 12), TABLES[policy], strict=True)):
        assert got == tuple(want) or list(got) == list(want), f"{policy} chunk {k}: {got} != {want}"


def test_infinity_rope_flush_and_cut_touch_one_chunk_only():
    cache = make_cache("infinity_rope")
    layout_rows(cache, 5)  # frames 0-14 generated; the window holds 0, 10-14
    sw = cache.switch(cut=True)
    assert [s.frame_idx for s in cache.slots] == [0, 13, 14]  # KV Flush: sink + the last 2 frames
    assert sw.recache == () and sw.pos_shift == 45 - 3
    assert layout_rows(cache, 3) == [
        (frames(0, 0) + frames(13, 14), [0, 1, 2], [45, 46, 47]),  # RoPE Cut: this chunk only
        (["f0", "f16", "f17"], [0, 1, 2], [3, 4, 5]),  # re-indexed as usual
        (["f0", "f19", "f20"], [0, 1, 2], [3, 4, 5]),
    ]


@pytest.mark.parametrize("chunks,keep,replayed", [
    (2, (), span(0, 5)),  # t = 6 <= window: the pass starts at frame 0 and re-encodes the sink too
    (6, (0, 1, 2), span(9, 17)),  # t = 18: sink protected, the other 9 cached frames re-encoded
])
def test_longlive_recache_reencodes_the_window_in_one_pass(chunks, keep, replayed):
    cache = make_cache("attention_sink")
    layout_rows(cache, chunks)
    sw = cache.switch()
    assert sw.keep == keep and list(sw.recache) == replayed
    plan = cache.begin_replay(tuple(replayed))
    assert plan.n_frames == len(replayed) and list(plan.query_pos) == replayed  # one pass, absolute positions
    assert [label for label, _ in cache.layout()[: plan.n_past]] == [f"f{i}" for i in keep]


@pytest.mark.parametrize("switch,kept", [("recache", ["f0", "f1", "f2", "long", "short"]),
                                         ("reset", ["f0", "f1", "f2"]), ("keep", None)])
def test_memrope_switch_keeps_sink_and_memories_or_resets_or_keeps_everything(switch, kept):
    cache = make_cache("memrope", switch=switch)
    layout_rows(cache, 6)  # committed: f0-f2, long, short, f11-f17
    sw = cache.switch()
    if kept is None:
        assert sw.recache == () and len(cache.slots) == 12
        return
    assert [s.label() for s in cache.slots] == kept and list(sw.recache) == span(11, 17)
