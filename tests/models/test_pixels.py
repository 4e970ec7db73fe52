"""Pixel quantisation: ``truncate`` is bit for bit the reference pipelines' uint8 frames, ``round`` is
diffusers'; every decoder applies the one rule it is given."""

from __future__ import annotations

import pytest
import torch

from memrope.models.pixels import PIXEL_MODES, quantise
from memrope.models.toy.autoencoder import FrameAutoencoder, WorldDecoder
from memrope.models.toy.decoder import ToyDecoder

# Every float32 in a range a little wider than [-1, 1] at a fine step, plus every bf16 value in it
# (a bf16 decoder's outputs) and the exact level boundaries.
GRID = torch.cat([
    torch.linspace(-1.25, 1.25, 2_000_001),
    torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float(),
    torch.arange(256) / 127.5 - 1,
])
GRID = GRID[torch.isfinite(GRID) & (GRID.abs() < 4)]


def wan_cache_video(x: torch.Tensor) -> torch.Tensor:
    """Wan-Video/Wan2.1@9737cba ``wan/utils/utils.py`` ``cache_video``: clamp to value_range, make_grid's
    normalize (``sub_(low).div_(high - low)``), then ``(x * 255).type(torch.uint8)``."""
    low, high = -1, 1
    x = x.clamp(low, high)
    x = x.clone().clamp_(min=low, max=high).sub_(low).div_(max(high - low, 1e-5))
    return (x * 255).type(torch.uint8)


def self_forcing_video(x: torch.Tensor) -> torch.Tensor:
    """guandeh17/Self-Forcing@33593df (and YoungRaeKimm/MemRoPE@b89bf5b) ``decode_to_pixel`` clamp,
    ``(video * 0.5 + 0.5).clamp(0, 1)``, ``255.0 * video``, torchvision ``write_video``'s uint8 cast."""
    video = (x.float().clamp_(-1, 1) * 0.5 + 0.5).clamp(0, 1)
    return torch.as_tensor(255.0 * video, dtype=torch.uint8)


def diffusers_round(x: torch.Tensor) -> torch.Tensor:
    """diffusers' video post-processing: ``(x / 2 + 0.5).clamp(0, 1)``, ``(x * 255).round()`` to uint8."""
    return ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)


def test_truncate_is_the_reference_pipelines_quantisation():
    ours = quantise(GRID)
    assert torch.equal(ours, wan_cache_video(GRID))
    assert torch.equal(ours, self_forcing_video(GRID))


def test_round_is_diffusers_quantisation():
    assert torch.equal(quantise(GRID, "round"), diffusers_round(GRID))


def test_rounding_differs_by_one_level_half_the_time():
    """For values spread evenly over [-1, 1], a level's fractional part is uniform: rounding goes up in
    half the cases, so the two modes differ by exactly one level there and by half a level on average."""
    x = torch.linspace(-1, 1, 1_000_001)
    diff = quantise(x, "round").int() - quantise(x, "truncate").int()
    assert set(diff.unique().tolist()) == {0, 1}
    assert abs(diff.float().mean().item() - 0.5) < 1e-3


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match=r"pixel quantisation must be one of truncate, round, got 'floor'"):
        quantise(GRID[:3], "floor")
    with pytest.raises(ValueError, match="pixel quantisation must be one of"):
        ToyDecoder(4, pixels="floor")


@pytest.mark.parametrize("mode", PIXEL_MODES)
def test_every_decoder_applies_the_rule(mode):
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ae = FrameAutoencoder().eval()
    z = torch.randn(1, ae.latent_channels, 2, 8, 8, generator=gen)
    world = WorldDecoder(ae, pixels=mode).decode(z)
    floats = ae.decode(z.transpose(1, 2).flatten(0, 1))  # [F, 3, H, W]
    assert torch.equal(world[0], quantise(floats, mode).movedim(1, -1))
    latents = torch.randn(1, 4, 3, 2, 2, generator=gen)
    toy = ToyDecoder(4, pixels=mode).decode(latents)
    rounded, truncated = (ToyDecoder(4, pixels=m).decode(latents).int() for m in ("round", "truncate"))
    assert torch.equal(toy.int(), rounded if mode == "round" else truncated)
    assert set((rounded - truncated).unique().tolist()) == {0, 1}


@pytest.mark.parametrize("mode", PIXEL_MODES)
def test_wan_decoder_applies_the_rule(mode):
    from memrope.models.vae import WanStreamingDecoder
    from tests.models.test_vae import TINY
    from tests.models.tiny_wan_files import tiny_vae

    latents = torch.randn(1, TINY.z_dim, 2, 2, 3, generator=torch.Generator().manual_seed(2))
    frames = WanStreamingDecoder(tiny_vae(), TINY, pixels=mode).decode(latents)
    floats = WanStreamingDecoder(tiny_vae(), TINY).decode_float(latents)  # [B, 3, T, H, W]
    assert torch.equal(frames, quantise(floats, mode).permute(0, 2, 3, 4, 1))
