"""``--noise reference``: the MemRoPE reference's draws, chunk by chunk, in constant memory, resumable.

The facts about torch's CPU normal stream that the chunked draw rests on are tested first, then the
stream against the reference's own calls (``torch.randn`` of the whole video's initial noise, then one
``torch.randn`` per re-noise, YoungRaeKimm/MemRoPE@b89bf5b ``inference.py`` and
``pipeline/causal_inference.py``), then the generator.
"""

from __future__ import annotations

import psutil
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memrope.cache import make_policy
from memrope.generate import GenerationConfig, StreamingGenerator, json_roundtrip
from memrope.noise import NORMAL_BLOCK, ReferenceNoise, pieces_equal_whole, skip

from .conftest import TINY_LATENT_HW

DTYPES = [torch.bfloat16, torch.float32]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- how torch's CPU randn consumes its mt19937 stream -------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40, deadline=None)
@given(blocks=st.lists(st.integers(1, 40), min_size=1, max_size=6), seed=st.integers(0, 2**31))
def test_block_sized_pieces_are_one_draw(dtype, blocks, seed):
    """Consecutive draws of 16 k values each equal one draw of their total, and leave the same state."""
    sizes = [NORMAL_BLOCK * b for b in blocks]
    whole_gen, parts_gen = gen(seed), gen(seed)
    whole = torch.randn(sum(sizes), generator=whole_gen, dtype=dtype)
    parts = torch.cat([torch.randn(n, generator=parts_gen, dtype=dtype) for n in sizes])
    assert torch.equal(whole, parts)
    assert torch.equal(whole_gen.get_state(), parts_gen.get_state())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [16, 160, 99840])
def test_a_block_sized_draw_consumes_one_word_per_value(dtype, n):
    """skip(n) (fp32 uniform_, one 32-bit word per value) lands where randn(n) lands."""
    drawn, skipped = gen(5), gen(5)
    torch.randn(n, generator=drawn, dtype=dtype)
    skip(skipped, n)
    assert torch.equal(drawn.get_state(), skipped.get_state())
    assert torch.equal(torch.randn(64, generator=drawn, dtype=dtype), torch.randn(64, generator=skipped, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_pieces_off_the_blocks_are_not_one_draw(dtype):
    """Why frames must be whole blocks: a piece boundary inside a block of 16 pairs other values (and a
    tail that is not a whole block is redrawn from extra words)."""
    whole = torch.randn(160, generator=gen(), dtype=dtype)
    g = gen()
    parts = torch.cat([torch.randn(153, generator=g, dtype=dtype), torch.randn(7, generator=g, dtype=dtype)])
    assert not torch.equal(whole, parts)
    assert pieces_equal_whole(dtype)


# --- the stream against the reference's own calls ------------------------------------------------------


def reference_draws(seed, batch, frame_shape, frames, chunk, renoises):
    """The reference's calls, in its order: whole-video initial noise, then per chunk its re-noises."""
    g = gen(seed)
    initial = torch.randn([batch, frames, *frame_shape], generator=g, dtype=torch.bfloat16)
    out = []
    for start in range(0, frames, chunk):
        out.append(initial[:, start:start + chunk])
        for _ in range(renoises):
            out.append(torch.randn([batch * chunk, *frame_shape], generator=g, dtype=torch.bfloat16)
                       .unflatten(0, (batch, chunk)))
    return out


def stream_draws(noise: ReferenceNoise, chunk: int, renoises: int, start: int = 0):
    out = []
    for first in range(start, noise.frames, chunk):
        out.append(noise.initial(first, chunk))
        out.extend(noise.renoise(chunk) for _ in range(renoises))
    return out


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("frame_shape", [(4, 4, 4), (16, 2, 3), (3, 3, 5)])  # the last: 45 values, held
def test_stream_gives_the_reference_draws(batch, frame_shape):
    frames, chunk, renoises = 12, 3, 3
    noise = ReferenceNoise(7, batch, frame_shape, frames)
    assert noise.chunked == (frame_shape != (3, 3, 5))
    assert noise.held_bytes == (0 if noise.chunked else batch * frames * 45 * 2)
    expected = reference_draws(7, batch, frame_shape, frames, chunk, renoises)
    got = stream_draws(noise, chunk, renoises)
    assert len(got) == len(expected)
    assert all(a.dtype == torch.bfloat16 and torch.equal(a, b) for a, b in zip(got, expected))


@pytest.mark.parametrize("frame_shape", [(4, 4, 4), (3, 3, 5)])
def test_stream_resumes_from_its_state(frame_shape):
    frames, chunk = 12, 3
    first = ReferenceNoise(3, 2, frame_shape, frames)
    head = []
    for f in range(0, 6, chunk):
        head.append(first.initial(f, chunk))
        head.extend(first.renoise(chunk) for _ in range(3))
    tensors, data = first.state_dict()
    assert all(t.dtype == torch.uint8 for t in tensors.values()) and data == {"drawn": 6}
    resumed = ReferenceNoise(3, 2, frame_shape, frames)
    resumed.load_state_dict({k: t.clone() for k, t in tensors.items()}, data)
    tail = stream_draws(resumed, chunk, 3, start=6)
    expected = reference_draws(3, 2, frame_shape, frames, chunk, 3)
    assert all(torch.equal(a, b) for a, b in zip(head + tail, expected, strict=True))


def test_stream_is_drawn_in_order():
    noise = ReferenceNoise(0, 1, (4, 4, 4), 9)
    noise.initial(0, 3)
    with pytest.raises(ValueError, match=r"drawn in order over 9 frames: next are frames from 3, asked for 6\.\.8"):
        noise.initial(6, 3)
    with pytest.raises(ValueError, match="reference noise state holds"):
        noise.load_state_dict({}, {"drawn": 0})


def test_stream_memory_does_not_grow_with_the_video():
    """Two million latent frames of 64 values: 256 MB of bf16 if the initial noise were held."""
    rss = psutil.Process().memory_info().rss
    noise = ReferenceNoise(0, 1, (4, 4, 4), 2_000_000)
    noise.initial(0, 3)
    noise.renoise(3)
    assert noise.chunked and noise.held_bytes == 0
    assert psutil.Process().memory_info().rss - rss < 64 * 2**20


# --- the generator ---------------------------------------------------------------------------------


def reference_generator(model, text, frames=12, batch=1, seed=4):
    config = GenerationConfig(latent_hw=TINY_LATENT_HW, batch=batch, seed=seed, noise="reference", noise_frames=frames)
    return StreamingGenerator(model, make_policy("memrope_reference"), text, config)


def test_generator_draws_the_reference_noise_in_its_own_layout(tiny_model, tiny_text):
    g = reference_generator(tiny_model, tiny_text)
    expected = reference_draws(4, 1, (tiny_model.config.in_dim, *TINY_LATENT_HW), 12, 3, 3)
    for k in range(4):
        for got, want in zip(g.chunk_noise(k), expected[4 * k:4 * k + 4], strict=True):
            assert torch.equal(got, want.permute(0, 2, 1, 3, 4).float())  # [B, C, n, h, w]


@pytest.mark.parametrize("batch", [1, 2])
def test_generator_resumes_the_reference_noise_exactly(tiny_model, tiny_text, batch):
    text = type(tiny_text)([k.expand(batch, -1, -1, -1) for k in tiny_text.k],
                           [v.expand(batch, -1, -1, -1) for v in tiny_text.v])
    whole = reference_generator(tiny_model, text, batch=batch)
    straight = [whole.next_chunk().latents for _ in range(4)]
    first = reference_generator(tiny_model, text, batch=batch)
    head = [first.next_chunk().latents for _ in range(2)]
    tensors, data = first.state_dict()
    data = json_roundtrip(data)  # as a run directory stores it
    expected = {"noise.renoise", *(f"noise.initial.{b}" for b in range(batch))}
    assert {k for k in tensors if k.startswith("noise.")} == expected
    resumed = reference_generator(tiny_model, text, batch=batch)
    resumed.load_state_dict(tensors, data)
    tail = [resumed.next_chunk().latents for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(head + tail, straight, strict=True))
    chunked = StreamingGenerator(tiny_model, make_policy("memrope_reference"), text,
                                 GenerationConfig(latent_hw=TINY_LATENT_HW, batch=batch, seed=4))
    assert not torch.equal(chunked.next_chunk().latents, straight[0])  # per-chunk noise is another video


def test_per_chunk_state_without_noise_modes_still_loads(tiny_model, tiny_text):
    """A checkpoint written before noise modes existed (no noise keys) resumes as per-chunk noise."""
    config = GenerationConfig(latent_hw=TINY_LATENT_HW, seed=1)
    first = StreamingGenerator(tiny_model, make_policy("memrope"), tiny_text, config)
    first.next_chunk()
    tensors, data = first.state_dict()
    data = json_roundtrip(data)
    for key in ("noise", "noise_frames"):
        del data["config"]["generation"][key]
    again = StreamingGenerator(tiny_model, make_policy("memrope"), tiny_text, config)
    again.load_state_dict(tensors, data)
    assert torch.equal(again.next_chunk().latents, first.next_chunk().latents)


def test_noise_config_errors():
    with pytest.raises(ValueError, match="noise must be one of chunk, reference, got 'gpu'"):
        GenerationConfig(latent_hw=(4, 4), noise="gpu")
    with pytest.raises(ValueError, match=r"needs the video's length in latent frames \(noise_frames\), a multiple "
                                         r"of chunk_frames 3; got 10"):
        GenerationConfig(latent_hw=(4, 4), noise="reference", noise_frames=10)
    with pytest.raises(ValueError, match="noise_frames applies to noise='reference' only"):
        GenerationConfig(latent_hw=(4, 4), noise_frames=12)
