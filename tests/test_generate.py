import pytest
import torch

from memrope.cache import make_policy
from memrope.generate import GenerationConfig, StreamingGenerator, chunk_seed, json_roundtrip
from memrope.models.toy.decoder import ToyDecoder

from .conftest import TINY_LATENT_HW


def video(model, text, seed, chunks=6, policy="memrope"):
    config = GenerationConfig(latent_hw=TINY_LATENT_HW, seed=seed)
    gen = StreamingGenerator(model, make_policy(policy), text, config, decoder=ToyDecoder(model.config.out_dim))
    results = list(gen.stream(chunks))
    return torch.cat([r.latents for r in results], 2), torch.cat([r.frames for r in results], 1)


def test_same_seed_same_video_other_seed_other_video(tiny_model, tiny_text):
    lat_a, frames_a = video(tiny_model, tiny_text, seed=7)
    lat_b, frames_b = video(tiny_model, tiny_text, seed=7)
    lat_c, frames_c = video(tiny_model, tiny_text, seed=8)
    assert torch.equal(lat_a, lat_b) and torch.equal(frames_a, frames_b)
    assert not torch.equal(lat_a, lat_c) and not torch.equal(frames_a, frames_c)


def test_decoded_frame_count_follows_the_wan_vae(tiny_model, tiny_text):
    latents, frames = video(tiny_model, tiny_text, seed=0, chunks=4)
    t = latents.shape[2]
    assert frames.shape[1] == 1 + 4 * (t - 1)
    assert frames.dtype == torch.uint8 and frames.shape[-1] == 3


def test_chunk_noise_depends_only_on_seed_and_chunk(tiny_model, tiny_text):
    config = GenerationConfig(latent_hw=TINY_LATENT_HW, seed=3)
    a = StreamingGenerator(tiny_model, make_policy("full"), tiny_text, config)
    b = StreamingGenerator(tiny_model, make_policy("full"), tiny_text, config)
    for _ in range(3):
        a.next_chunk()
    assert all(torch.equal(x, y) for x, y in zip(a.chunk_noise(5), b.chunk_noise(5)))
    assert len({chunk_seed(3, i) for i in range(1000)}) == 1000


def test_different_prompts_give_different_videos(tiny_model):
    cfg = tiny_model.config
    gen = torch.Generator().manual_seed(0)
    texts = [tiny_model.encode_text(torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen)) for _ in range(2)]
    a, _ = video(tiny_model, texts[0], seed=0, chunks=2)
    b, _ = video(tiny_model, texts[1], seed=0, chunks=2)
    assert not torch.equal(a, b)


def test_stats_name_the_required_fields(tiny_model, tiny_text):
    config = GenerationConfig(latent_hw=TINY_LATENT_HW)
    stats = StreamingGenerator(tiny_model, make_policy("memrope"), tiny_text, config).next_chunk().stats
    assert {"index", "ms", "cache_bytes", "max_frame_pos"} <= set(stats)


def test_generation_config_validation():
    with pytest.raises(ValueError, match="chunk_frames"):
        GenerationConfig(latent_hw=(4, 4), chunk_frames=0)
    with pytest.raises(ValueError, match="latent_hw"):
        GenerationConfig(latent_hw=(0, 4))


def _stream(model, text, chunks, overlap, switches=None, gen=None):
    config = GenerationConfig(latent_hw=TINY_LATENT_HW, seed=5)
    gen = gen or StreamingGenerator(model, make_policy("memrope"), text, config,
                                    decoder=ToyDecoder(model.config.out_dim))
    return gen, list(gen.stream(chunks, switches, overlap_decode=overlap))


def test_overlapped_decoding_gives_the_sequential_video_in_order(tiny_model, tiny_text):
    for switches in (None, {3: (tiny_text, False)}):
        _, seq = _stream(tiny_model, tiny_text, 7, overlap=False, switches=switches)
        _, ovl = _stream(tiny_model, tiny_text, 7, overlap=True, switches=switches)
        assert [r.index for r in ovl] == list(range(7))
        for a, b in zip(seq, ovl, strict=True):
            assert torch.equal(a.latents, b.latents) and torch.equal(a.frames, b.frames)
            assert a.stats.get("switch") == b.stats.get("switch") and "decode_ms" in b.stats
        assert (switches is None) == all("switch" not in r.stats for r in ovl)


def test_state_taken_while_holding_a_chunk_resumes_the_pending_one_first(tiny_model, tiny_text):
    """Overlapped: when chunk k is in the caller's hands, chunk k + 1 is generated but not decoded.
    A state saved then carries it, and a resumed generator (overlapped or not) yields it first."""
    _, whole = _stream(tiny_model, tiny_text, 8, overlap=False)
    config = GenerationConfig(latent_hw=TINY_LATENT_HW, seed=5)
    for resume_overlapped in (True, False):
        gen = StreamingGenerator(tiny_model, make_policy("memrope"), tiny_text, config,
                                 decoder=ToyDecoder(tiny_model.config.out_dim))
        stream = gen.stream(8, overlap_decode=True)
        head = [next(stream) for _ in range(4)]
        assert gen.chunks_emitted == 4 and gen.cache.clock.chunks == 5
        tensors, data = gen.state_dict()
        stream.close()
        resumed = StreamingGenerator(tiny_model, make_policy("memrope"), tiny_text, config,
                                     decoder=ToyDecoder(tiny_model.config.out_dim))
        resumed.load_state_dict(tensors, json_roundtrip(data))  # as a run directory stores it
        assert resumed.chunks_emitted == 4
        tail = list(resumed.stream(8, overlap_decode=resume_overlapped))
        got = head + tail
        assert [r.index for r in got] == list(range(8))
        for a, b in zip(whole, got, strict=True):
            assert torch.equal(a.latents, b.latents) and torch.equal(a.frames, b.frames)
