"""Streaming Wan 2.1 VAE *encoder*: video frames in, normalised latents out, causal across calls.

The Wan VAE encoder is causal in time like its decoder (:mod:`memrope.models.vae`): diffusers'
``AutoencoderKLWan._encode`` feeds the first frame alone, then groups of four frames, through the
encoder with a per-convolution feature cache, and clears the cache around every call. Here that
cache lives across calls, so a video given chunk by chunk (``1 + 4k`` frames first, ``4k`` after)
encodes to exactly the latents of one whole-clip encode (tested against diffusers' own ``encode``),
in memory independent of the video's length. Latents are the posterior's mode (its mean), normalised
with the VAE's latent statistics as the diffusion model sees them: ``(mu - mean) / std``, the inverse
of the decoder's de-normalisation.

It drives the same private diffusers protocol (``feat_cache`` / ``feat_idx``) as the decoder, within
:data:`memrope.models.vae.SUPPORTED_DIFFUSERS`; it shares the decoder's module (no second copy).
"""

from __future__ import annotations

import inspect

import torch

from .vae import WanVAEConfig, check_diffusers_version

PIXEL_SCALE = 127.5
"""uint8 -> [-1, 1]: x / 127.5 - 1, the inverse of the pixel mapping every decoder quantises."""


def _count_encoder_slots(encoder: torch.nn.Module) -> int:
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    return sum(isinstance(m, WanCausalConv3d) for m in encoder.modules())


class WanStreamingEncoder:
    """uint8 frames ``[T, H, W, 3]`` -> normalised latents ``[1, z_dim, F, H/8, W/8]``, continuing the stream.

    The first call of a stream takes ``1 + 4 (F - 1)`` frames and later calls ``4 F`` (Wan 2.1's
    factors: the first frame is encoded alone), so a clip of ``1 + 4 (N - 1)`` frames gives N latent
    frames whatever the split.
    """

    def __init__(self, vae: torch.nn.Module, config: WanVAEConfig, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        check_diffusers_version()
        if not {"feat_cache", "feat_idx"} <= set(inspect.signature(vae.encoder.forward).parameters):
            raise ImportError("this AutoencoderKLWan encoder lacks feat_cache/feat_idx")
        self.vae, self.config = vae, config
        self.device, self.dtype = torch.device(device), dtype
        self.temporal_stride = config.temporal_factor
        self.spatial_stride = config.spatial_factor
        self._n_slots = _count_encoder_slots(vae.encoder)
        shape = (1, config.z_dim, 1, 1, 1)  # broadcast over [B, C, F, h, w]
        self._mean = torch.tensor(config.latents_mean, dtype=torch.float32, device=self.device).view(shape)
        self._std = torch.tensor(config.latents_std, dtype=torch.float32, device=self.device).view(shape)
        self.reset()

    def reset(self) -> None:
        """Forget the causal state: the next call starts a new clip (its first frame is encoded alone)."""
        self._cache: list[torch.Tensor | str | None] = [None] * self._n_slots
        self._frames_in = 0

    def frames_for(self, latent_frames: int, first: bool) -> int:
        """Pixel frames that give ``latent_frames`` latent frames (on a clip's first call or a later one)."""
        return self.temporal_stride * latent_frames - (self.temporal_stride - 1 if first else 0)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``[T, H, W, 3]`` -> float32 ``[1, z_dim, F, h, w]`` on this encoder's device."""
        first = self._frames_in == 0
        t, s = frames.shape[0], self.temporal_stride
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
        if (t - 1 if first else t) % s or t < 1:
            raise ValueError(f"the Wan VAE encodes 1 + {s}k frames first and {s}k after, got {t}")
        if frames.shape[1] % self.spatial_stride or frames.shape[2] % self.spatial_stride:
            raise ValueError(f"frame size {list(frames.shape[1:3])} is not a multiple of {self.spatial_stride}")
        x = frames.to(device=self.device).permute(3, 0, 1, 2).unsqueeze(0)  # [1, 3, T, H, W]
        x = (x.to(torch.float32) / PIXEL_SCALE - 1.0).to(self.dtype)
        groups = ([x[:, :, :1]] if first else []) + [x[:, :, i:i + s] for i in range(1 if first else 0, t, s)]
        outs = []
        for group in groups:  # diffusers' _encode: the first frame alone, then `s` at a time
            outs.append(self.vae.encoder(group, feat_cache=self._cache, feat_idx=[0]))
        self._frames_in += t
        moments = self.vae.quant_conv(torch.cat(outs, dim=2)).float()  # [1, 2 z, F, h, w]: mean, log-variance
        mu = moments[:, : self.config.z_dim]
        return (mu - self._mean) / self._std
