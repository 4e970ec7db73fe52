"""Property-based tests: parsers either accept input or fail with a ValueError, never otherwise."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from memrope.cache import make_policy, policy_names
from memrope.schedule import PromptSchedule, PromptSegment, parse_inline, schedule_from_data
from memrope.session import Manifest, SessionError

words = st.text(alphabet=st.characters(blacklist_characters="|[]#", blacklist_categories=("Cs",)), min_size=1,
                max_size=30).filter(lambda s: s.strip())


@given(st.lists(st.tuples(words, st.integers(1, 600), st.booleans()), min_size=1, max_size=6))
def test_inline_schedule_round_trips(parts):
    text = " | ".join(f"{p}[{s}s{'#' if cut and i else ''}]" for i, (p, s, cut) in enumerate(parts))
    sched = parse_inline(text)
    assert [seg.prompt for seg in sched.segments] == [p.strip() for p, _, _ in parts]
    assert [seg.seconds for seg in sched.segments] == [float(s) for _, s, _ in parts]
    assert [seg.cut for seg in sched.segments] == [bool(c and i) for i, (_, _, c) in enumerate(parts)]
    starts = sched.start_chunks(0.75)
    assert starts[0] == 0 and all(b > a for a, b in zip(starts, starts[1:]))


@given(st.text(max_size=200))
def test_inline_schedule_never_crashes(text):
    try:
        sched = parse_inline(text)
    except ValueError:
        return
    assert isinstance(sched, PromptSchedule) and all(isinstance(s, PromptSegment) for s in sched.segments)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4), max_leaves=12)


@given(json_values)
def test_schedule_data_accepts_or_explains(data):
    try:
        schedule_from_data(data)
    except ValueError:
        pass


@given(st.sampled_from(policy_names()), st.dictionaries(st.sampled_from(
    ["cache_size", "sink", "window", "alpha_long", "alpha_short", "memory", "reduction", "faithful", "budget",
     "recent", "flush_keep", "cut_gap", "bogus"]), st.text(max_size=6) | st.integers(-3, 40), max_size=3))
@settings(max_examples=200)
def test_policy_options_accept_or_explain(name, options):
    try:
        policy = make_policy(name, options)
    except ValueError as e:
        assert str(e)  # a message that says what to change
        return
    assert policy.name in name or name.startswith(policy.name)


@given(json_values)
def test_manifest_parsing_accepts_or_rejects_cleanly(data):
    try:
        Manifest.from_json(data, "m.json")
    except SessionError:
        pass


@given(st.text(min_size=1, max_size=40))
def test_manifest_segment_names_stay_inside_the_run_directory(name):
    good = {"version": 1, "settings": {}, "chunks_done": 1, "complete": False, "chunk_stats": [{}],
            "state": "state_000001.safetensors",
            "segments": [{"name": name, "first_chunk": 0, "chunks": 1, "frames": 4}]}
    try:
        manifest = Manifest.from_json(json.loads(json.dumps(good)), "m.json")
    except SessionError:
        return
    assert "/" not in manifest.segments[0].name and ".." not in manifest.segments[0].name
