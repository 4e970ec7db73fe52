"""The embedded default's latent mapping: a small per-frame convolutional autoencoder.

A 64x64 RGB frame (model range [-1, 1]) maps to an 8x8 latent with ``latent_channels`` channels
(spatial stride 8, like the Wan VAE, but no temporal compression: one latent frame per video frame,
``temporal_stride = 1``). The latent is normalised per channel with statistics measured on world
frames after training (``latent_mean`` / ``latent_std`` buffers), so the diffusion model sees
roughly unit-variance latents, as it would with a real VAE's scaling factors.

``WorldDecoder`` wraps the decoder half in the ``LatentDecoder`` protocol of ``generate.py``: it is
stateless across chunks (per-frame), so ``reset()`` does nothing and every latent frame gives one
video frame.
"""

from __future__ import annotations

import torch
from torch import nn

from ..pixels import DEFAULT_PIXELS, check_pixels, quantise

SPATIAL_STRIDE = 8
"""Pixels per latent cell along each axis (three stride-2 stages)."""

DEFAULT_LATENT_CHANNELS = 8
DEFAULT_WIDTHS = (32, 64, 96)
"""Encoder channels at 32x32 / 16x16 / 8x8; the decoder mirrors them (and 24 channels at 64x64)."""


def _act() -> nn.Module:
    return nn.GELU(approximate="tanh")


class FrameAutoencoder(nn.Module):
    """Frame [N, 3, H, W] in [-1, 1] <-> normalised latent [N, C, H/8, W/8]."""

    def __init__(self, latent_channels: int = DEFAULT_LATENT_CHANNELS,
                 widths: tuple[int, int, int] = DEFAULT_WIDTHS):
        super().__init__()
        if latent_channels < 1 or len(widths) != 3 or min(widths) < 1:
            raise ValueError("FrameAutoencoder: latent_channels >= 1 and three widths >= 1 are required")
        self.latent_channels = latent_channels
        self.widths = tuple(widths)
        w0, w1, w2 = widths
        # Strided convolutions down and transposed convolutions up: no full-resolution 3x3 layer
        # with many channels, so that decoding stays cheap on a CPU (about 50 MMAC per frame).
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w0, 4, stride=2, padding=1), _act(),  # [N, w0, 32, 32]
            nn.Conv2d(w0, w1, 4, stride=2, padding=1), _act(),  # [N, w1, 16, 16]
            nn.Conv2d(w1, w1, 3, padding=1), _act(),
            nn.Conv2d(w1, w2, 4, stride=2, padding=1), _act(),  # [N, w2, 8, 8]
            nn.Conv2d(w2, latent_channels, 1),  # [N, C, 8, 8]
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, w2, 3, padding=1), _act(),  # [N, w2, 8, 8]
            nn.ConvTranspose2d(w2, w1, 4, stride=2, padding=1), _act(),  # [N, w1, 16, 16]
            nn.Conv2d(w1, w1, 3, padding=1), _act(),
            nn.ConvTranspose2d(w1, w0 + w0 // 2, 4, stride=2, padding=1), _act(),  # [N, 1.5 w0, 32, 32]
            nn.ConvTranspose2d(w0 + w0 // 2, w0 - w0 // 4, 4, stride=2, padding=1), _act(),  # 64x64
            nn.Conv2d(w0 - w0 // 4, 3, 3, padding=1),  # [N, 3, 64, 64]
        )
        self.register_buffer("latent_mean", torch.zeros(latent_channels))
        self.register_buffer("latent_std", torch.ones(latent_channels))

    # raw (unnormalised) latents: what the reconstruction loss trains
    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    # normalised latents: what the diffusion model sees
    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1)
        return self.latent_mean.view(shape).to(z.dtype), self.latent_std.view(shape).to(z.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> [N, C, H/8, W/8], per-channel zero mean / unit std on world frames."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] % SPATIAL_STRIDE or x.shape[-2] % SPATIAL_STRIDE:
            raise ValueError(f"expected frames [N, 3, H, W] with H, W multiples of {SPATIAL_STRIDE}, "
                             f"got {list(x.shape)}")
        mean, std = self._stats(x)
        return (self.encode_raw(x) - mean) / std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[N, C, h, w] normalised latents -> [N, 3, 8h, 8w] in (roughly) [-1, 1]."""
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"expected latents [N, {self.latent_channels}, h, w], got {list(z.shape)}")
        mean, std = self._stats(z)
        return self.decode_raw(z * std + mean)

    @torch.no_grad()
    def set_latent_stats(self, frames: torch.Tensor) -> None:
        """Measure per-channel mean / std of raw latents on ``frames`` [N, 3, H, W]."""
        z = self.encode_raw(frames)  # [N, C, h, w]
        self.latent_mean.copy_(z.mean(dim=(0, 2, 3)))
        self.latent_std.copy_(z.std(dim=(0, 2, 3)).clamp_min(1e-4))


def to_uint8(pixels: torch.Tensor, mode: str = DEFAULT_PIXELS) -> torch.Tensor:
    """[..., 3, H, W] in [-1, 1] -> uint8 [..., H, W, 3], clamped and quantised by ``mode`` (truncated by
    default, as the reference pipelines do: :mod:`memrope.models.pixels`)."""
    return quantise(pixels, mode).movedim(-3, -1).contiguous()


class WorldDecoder:
    """``LatentDecoder`` of the embedded default: per-frame, so one video frame per latent frame."""

    temporal_stride = 1
    spatial_stride = SPATIAL_STRIDE

    def __init__(self, autoencoder: FrameAutoencoder, pixels: str = DEFAULT_PIXELS):
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.pixels = check_pixels(pixels)
        self.latent_channels = autoencoder.latent_channels

    def reset(self) -> None:
        """No causal state: each frame decodes on its own."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError("WorldDecoder has no state to restore")

    def frames_for(self, latent_frames: int, first: bool) -> int:
        return latent_frames

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, F, h, w] -> uint8 [B, F, 8h, 8w, 3]."""
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"expected latents [B, {self.latent_channels}, F, h, w], "
                             f"got {list(latents.shape)}")
        p = next(self.autoencoder.parameters())
        b, _, f = latents.shape[:3]
        z = latents.detach().to(device=p.device, dtype=p.dtype)
        z = z.transpose(1, 2).flatten(0, 1)  # [B*F, C, h, w]
        pixels = self.autoencoder.decode(z)  # [B*F, 3, H, W]
        return to_uint8(pixels, self.pixels).cpu().unflatten(0, (b, f))  # [B, F, H, W, 3]
