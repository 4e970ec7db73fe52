"""Streams that start from an image or a video: the encoders and which frames become context."""

import numpy as np
import pytest
import torch

from memrope.context import ContextError, load_context, read_frames
from memrope.models.toy.default import load_default
from memrope.models.vae import WanStreamingDecoder, WanVAEConfig
from memrope.models.vae_encoder import WanStreamingEncoder
from memrope.models.wan_bundle import WanVideoDecoder
from memrope.video import VideoWriter
from memrope.world.clips import ClipConfig, sample_clip, to_model_range

TINY_VAE = WanVAEConfig(base_dim=8)


@pytest.fixture(scope="module")
def toy():
    return load_default()


@pytest.fixture(scope="module")
def tiny_vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(**TINY_VAE.diffusers_kwargs()).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if name.endswith("gamma") else 0.2 * torch.randn_like(p))
    return vae


def clip_frames(n, seed=3):
    return sample_clip(seed, ClipConfig(n_frames=n, dtype="uint8")).video.permute(0, 2, 3, 1).numpy()  # [T, H, W, 3]


def test_world_encoder_is_the_autoencoder_s_encoder_in_the_model_s_range(toy):
    frames = clip_frames(5)
    got = toy.decoder.encoder().encode(torch.from_numpy(frames))  # [1, C, T, h, w]
    autoencoder = toy.decoder.autoencoder
    with torch.no_grad():
        expected = autoencoder.encode(to_model_range(frames))  # [T, C, h, w]
    assert got.shape == (1, autoencoder.latent_channels, 5, 8, 8)
    torch.testing.assert_close(got[0].transpose(0, 1), expected, rtol=0, atol=1e-5)  # conv on another layout


def test_wan_streaming_encoder_equals_diffusers_whole_clip_encode(tiny_vae):
    """Fed 1 + 4k frames, then 4k at a time, the carried causal state gives diffusers' own latents."""
    g = torch.Generator().manual_seed(2)
    frames = torch.randint(0, 256, (1 + 4 * 8, 32, 32, 3), generator=g, dtype=torch.uint8)
    x = frames.permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1  # [1, 3, T, H, W]
    with torch.no_grad():
        mu = tiny_vae.encode(x).latent_dist.mode()
    mean = torch.tensor(TINY_VAE.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(TINY_VAE.latents_std).view(1, -1, 1, 1, 1)
    expected = (mu - mean) / std  # [1, 16, 9, 4, 4]
    encoder = WanStreamingEncoder(tiny_vae, TINY_VAE)
    parts = [encoder.encode(frames[:9]), encoder.encode(frames[9:21]), encoder.encode(frames[21:])]
    assert [p.shape[2] for p in parts] == [3, 3, 3]
    torch.testing.assert_close(torch.cat(parts, dim=2), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="encodes 1 \\+ 4k frames first and 4k after, got 5"):
        encoder.encode(frames[:5])


def test_the_wan_decoder_gives_its_own_encoder(tiny_vae):
    decoder = WanVideoDecoder(WanStreamingDecoder(tiny_vae, TINY_VAE))
    encoder = decoder.encoder()
    assert encoder.vae is tiny_vae and encoder.frames_for(3, first=True) == 9 and encoder.frames_for(3, False) == 12


def write_video(path, frames):
    with VideoWriter(path, fps=16) as w:
        w.write(frames)
    return path


def test_a_video_gives_its_last_frames_that_make_whole_chunks(toy, tmp_path):
    frames = clip_frames(20)
    path = write_video(tmp_path / "clip.mkv", frames)  # lossless: the decoded frames are these
    context = load_context(path, toy.decoder, (64, 64), chunk_frames=3, max_chunks=4)
    assert context.kind == "video" and context.frames == 12 and len(context.chunks) == 4
    kept, total = read_frames(path, 64, 64, keep=12)
    assert total == 20 and np.array_equal(kept, frames[8:])  # the last 12 of 20 (lossless: the same pixels)
    encoder = toy.decoder.encoder()
    for k, chunk in enumerate(context.chunks):  # (convolutions of other batch sizes round differently)
        torch.testing.assert_close(chunk, encoder.encode(torch.from_numpy(frames[8 + 3 * k:11 + 3 * k])), rtol=0,
                                   atol=1e-5)
    short = load_context(write_video(tmp_path / "short.mkv", frames[:7]), toy.decoder, (64, 64), 3, max_chunks=4)
    assert len(short.chunks) == 2 and short.frames == 6
    assert list(context.by_chunk(3)) == [3]


def test_an_image_is_a_still_chunk(toy, tmp_path):
    frame = clip_frames(1)
    path = write_video(tmp_path / "frame.mkv", frame)
    png = tmp_path / "frame.png"
    import av

    with av.open(str(png), "w", format="image2") as c:
        s = c.add_stream("png")
        s.width, s.height, s.pix_fmt = 64, 64, "rgb24"
        for packet in s.encode(av.VideoFrame.from_ndarray(frame[0], format="rgb24")):
            c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    for source in (png, path):
        context = load_context(source, toy.decoder, (64, 64), chunk_frames=3)
        assert context.kind == "image" and len(context.chunks) == 1
        still = context.chunks[0]
        assert torch.equal(still[:, :, 0], still[:, :, 1]) and torch.equal(still[:, :, 0], still[:, :, 2])


def test_frames_of_another_size_are_scaled(toy, tmp_path):
    frames = np.repeat(np.repeat(clip_frames(3), 2, axis=1), 2, axis=2)  # 128x128
    context = load_context(write_video(tmp_path / "big.mkv", frames), toy.decoder, (64, 64), 3)
    assert context.chunks[0].shape == (1, 8, 3, 8, 8)


@pytest.mark.parametrize("name, content, message", [
    ("notes.txt", b"hello", "an image (.png, .jpg, .jpeg, .webp, .bmp) or a video (.mp4, .mkv, .webm, .mov, .avi) "
                            "can start a stream, not .txt"),
    ("broken.mp4", b"\x00" * 64, "cannot be read as an image or a video"),
    ("missing.png", None, "does not exist or is not a file"),
])
def test_bad_inputs_are_one_line_errors(toy, tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ContextError) as error:
        load_context(path, toy.decoder, (64, 64), 3)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_video_shorter_than_a_chunk_and_a_decoder_without_encoder(toy, tmp_path, tiny_vae):
    decoder = WanVideoDecoder(WanStreamingDecoder(tiny_vae, TINY_VAE))
    path = write_video(tmp_path / "five.mkv", np.zeros((5, 32, 32, 3), np.uint8))
    with pytest.raises(ContextError, match="has 5 frames; a video needs at least 9 \\(one chunk\\)"):
        load_context(path, decoder, (32, 32), chunk_frames=3)

    class NoEncoder:
        pass

    with pytest.raises(ContextError, match="has no encoder"):
        load_context(path, NoEncoder(), (32, 32), 3)
    with pytest.raises(ContextError, match="1 to 64 chunks"):
        load_context(path, decoder, (32, 32), 3, max_chunks=0)
