"""The streaming API (memrope.stream.LiveStream) against the fixed-length generator it generalises."""

import threading

import pytest
import torch

from memrope.cache import make_policy
from memrope.cache.preflight import preflight
from memrope.generate import GenerationConfig, StreamingGenerator, json_roundtrip
from memrope.models.toy.decoder import ToyDecoder
from memrope.stream import LiveStream, PromptSpan, position_limit

from .conftest import TINY_LATENT_HW


@pytest.fixture(scope="module")
def texts(tiny_model):
    cfg = tiny_model.config
    gen = torch.Generator().manual_seed(11)
    return {p: tiny_model.encode_text(torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen)) for p in "abc"}


def generator(model, text, policy="memrope", seed=5):
    config = GenerationConfig(latent_hw=TINY_LATENT_HW, seed=seed)
    return StreamingGenerator(model, make_policy(policy), text, config, decoder=ToyDecoder(model.config.out_dim))


def live(model, texts, policy="memrope", **options):
    gen = generator(model, texts["a"], policy)
    return LiveStream(gen, texts.__getitem__, [PromptSpan(0, "a")], **options)


def same(xs, ys):
    assert [r.index for r in xs] == [r.index for r in ys]
    for x, y in zip(xs, ys, strict=True):
        assert torch.equal(x.latents, y.latents) and torch.equal(x.frames, y.frames)


@pytest.mark.parametrize("overlap", [False, True])
def test_a_scheduled_stream_equals_the_generator_s_own_schedule(tiny_model, texts, overlap):
    reference = list(generator(tiny_model, texts["a"]).stream(8, {3: (texts["b"], False), 6: (texts["c"], True)},
                                                              overlap_decode=overlap))
    spans = [PromptSpan(0, "a"), PromptSpan(3, "b"), PromptSpan(6, "c", cut=True)]
    stream = LiveStream(generator(tiny_model, texts["a"]), texts.__getitem__, spans, until=8, overlap_decode=overlap)
    got = list(stream)
    same(reference, got)
    assert [r.stats["prompt_index"] for r in got] == [0, 0, 0, 1, 1, 1, 2, 2]
    assert [r.stats.get("switch") for r in got] == [r.stats.get("switch") for r in reference]
    assert stream.stopped_by == "length"


@pytest.mark.parametrize("overlap, lag", [(False, 1), (True, 2)])
def test_a_live_prompt_change_reaches_the_next_chunk_generated(tiny_model, texts, overlap, lag):
    """Changed while the caller holds chunk k: chunk k + 1 gets it (k + 2 with the overlapped decode,
    whose k + 1 is made already); the result is the schedule with the switch there."""
    stream = live(tiny_model, texts, overlap_decode=overlap)
    got = []
    for result in stream:
        got.append(result)
        if result.index == 2:
            stream.set_prompt("b", cut=True)
        if result.index == 7:
            stream.stop()
    assert stream.stopped_by == "stop"
    switch = 3 + lag - 1
    assert [s.start for s in stream.segments] == [0, switch] and stream.segments[1].cut
    reference = list(generator(tiny_model, texts["a"]).stream(len(got), {switch: (texts["b"], True)},
                                                              overlap_decode=overlap))
    same(reference, got)


def test_changes_between_two_boundaries_coalesce_last_prompt_cut_if_any(tiny_model, texts):
    stream = live(tiny_model, texts, overlap_decode=False)
    chunks = iter(stream)
    next(chunks)
    stream.set_prompt("b", cut=True)
    stream.set_prompt("c")
    nxt = next(chunks)
    assert nxt.stats["switch"]["cut"] and stream.segments[-1] == PromptSpan(1, "c", cut=True)


def test_a_refused_prompt_is_the_caller_s_error_and_changes_nothing(tiny_model, texts):
    def encode(prompt):
        if prompt == "bad":
            raise ValueError("the embedded toy model does not know 'bad'")
        return texts[prompt]

    stream = LiveStream(generator(tiny_model, texts["a"]), encode, [PromptSpan(0, "a")], until=3,
                        overlap_decode=False)
    with pytest.raises(ValueError, match="does not know 'bad'"):
        stream.set_prompt("bad")
    assert [r.stats.get("switch") for r in stream] == [None] * 3


def test_stop_from_another_thread_ends_after_the_pending_chunk(tiny_model, texts):
    stream = live(tiny_model, texts, overlap_decode=True)
    seen = []
    for result in stream:
        seen.append(result.index)
        if result.index == 4:
            threading.Thread(target=stream.stop).start()
            threading.Event().wait(0.05)
    assert seen == list(range(len(seen))) and len(seen) >= 6  # chunk 5 was pending: still yielded
    assert stream.chunks_made == len(seen)


@pytest.mark.parametrize("overlap", [False, True])
def test_a_saved_live_stream_resumes_exactly(tiny_model, texts, overlap):
    whole = list(generator(tiny_model, texts["a"]).stream(10, {4: (texts["b"], False)}, overlap_decode=overlap))
    stream = live(tiny_model, texts, overlap_decode=overlap)
    head = []
    for result in stream:
        head.append(result)
        if result.index == 4 - (2 if overlap else 1):
            stream.set_prompt("b")
        if result.index == 5:
            tensors, data = stream.state_dict()
            break
    resumed = LiveStream.resume(generator(tiny_model, texts["c"]), texts.__getitem__, tensors, json_roundtrip(data),
                                until=10, overlap_decode=overlap)
    assert resumed.segments == [PromptSpan(0, "a"), PromptSpan(4, "b")]
    same(whole, head + list(resumed))


def test_context_chunks_continue_exactly_like_the_stream_that_made_them(tiny_model, texts):
    """Committing a stream's own first chunks as clean context gives that stream's cache, so what
    follows is the same chunks bit for bit (noise is a function of seed and chunk index)."""
    for policy in ("memrope", "sliding_window", "infinity_rope"):
        original = list(generator(tiny_model, texts["a"], policy).stream(9))
        context = {k: original[k].latents for k in range(4)}
        stream = LiveStream(generator(tiny_model, texts["a"], policy), texts.__getitem__, [PromptSpan(0, "a")],
                            context=context, until=9, overlap_decode=True)
        got = list(stream)
        assert [r.stats.get("context", False) for r in got] == [True] * 4 + [False] * 5
        for a, b in zip(original, got, strict=True):
            assert torch.equal(a.latents, b.latents)
        assert all(torch.equal(a.frames, b.frames) for a, b in zip(original[4:], got[4:]))


def test_context_of_the_wrong_shape_is_refused(tiny_model, texts):
    gen = generator(tiny_model, texts["a"])
    with pytest.raises(ValueError, match=r"context latents must be one chunk \[1, 4, 3, 4, 4\], got \[1, 4, 2, 4, 4\]"):
        LiveStream(gen, texts.__getitem__, [PromptSpan(0, "a")], context={0: torch.zeros(1, 4, 2, 4, 4)})


def test_position_limit_is_where_preflight_first_fails(tiny_model):
    rope = tiny_model.rope
    for name in ("sliding_window", "attention_sink", "full"):
        policy = make_policy(name)
        limit = position_limit(policy, rope, 3)
        assert limit is not None
        preflight(policy, rope, 3, limit)
        with pytest.raises(ValueError):
            preflight(policy, rope, 3, limit + 1)
    assert position_limit(make_policy("memrope"), rope, 3) is None
    assert position_limit(make_policy("infinity_rope"), rope, 3) is None


def test_spans_are_checked():
    with pytest.raises(ValueError, match="the first segment cannot start with a cut"):
        PromptSpan(0, "a", cut=True)
    with pytest.raises(ValueError, match="non-empty prompt"):
        PromptSpan(2, " ")
