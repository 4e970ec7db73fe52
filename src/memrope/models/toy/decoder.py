"""A fixed, training-free latent -> pixel mapping for the embedded default model.

It mimics the Wan VAE's interface and frame arithmetic so the whole streaming path (decode per
chunk, causal state, 1 + 4(T-1) frames) runs without any weights: each latent frame is projected
to RGB by a fixed linear map, upsampled in space, and expanded 4x in time by interpolating from the
previous latent frame (the causal state carried across chunks). The first latent frame of a stream
gives one frame, every later one four - exactly the Wan VAE's counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..pixels import DEFAULT_PIXELS, check_pixels, quantise

WAN_TEMPORAL_STRIDE = 4  # video frames per latent frame after the first (Wan VAE)
WAN_SPATIAL_STRIDE = 8  # pixels per latent cell along each axis (Wan VAE)
PROJECTION_SEED = 1234  # fixed so every install decodes the same latents to the same pixels


class ToyDecoder:
    def __init__(self, latent_channels: int, spatial_stride: int = WAN_SPATIAL_STRIDE,
                 temporal_stride: int = WAN_TEMPORAL_STRIDE, pixels: str = DEFAULT_PIXELS):
        if latent_channels < 1 or spatial_stride < 1 or temporal_stride < 1:
            raise ValueError("ToyDecoder: channels and strides must be >= 1")
        self.pixels = check_pixels(pixels)  # uint8 quantisation (memrope.models.pixels)
        self.latent_channels = latent_channels
        self.spatial_stride = spatial_stride
        self.temporal_stride = temporal_stride
        gen = torch.Generator().manual_seed(PROJECTION_SEED)
        # [3, C]: unit-norm rows so unit-variance latents map to roughly unit-variance colour.
        proj = torch.randn(3, latent_channels, generator=gen)
        self.projection = proj / proj.norm(dim=1, keepdim=True)
        self.previous: torch.Tensor | None = None  # [B, C, h, w] last latent frame of the stream

    def reset(self) -> None:
        self.previous = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.previous is None else {"previous": self.previous.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.previous = state.get("previous")

    def frames_for(self, latent_frames: int, first: bool) -> int:
        return self.temporal_stride * latent_frames - (self.temporal_stride - 1 if first else 0)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, F, h, w] -> uint8 [B, T, h*s, w*s, 3]."""
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"expected latents [B, {self.latent_channels}, F, h, w], got {list(latents.shape)}")
        lat = latents.detach().float().cpu()
        steps = []
        for f in range(lat.shape[2]):
            cur = lat[:, :, f]
            if self.previous is None:
                steps.append(cur)
            else:
                for k in range(1, self.temporal_stride + 1):
                    steps.append(torch.lerp(self.previous, cur, k / self.temporal_stride))
            self.previous = cur
        seq = torch.stack(steps, dim=1)  # [B, T, C, h, w]
        rgb = torch.einsum("btchw,kc->btkhw", seq, self.projection)  # [B, T, 3, h, w]
        b, t = rgb.shape[:2]
        rgb = F.interpolate(rgb.flatten(0, 1), scale_factor=self.spatial_stride, mode="bilinear",
                            align_corners=False)
        pixels = quantise(rgb, self.pixels)  # [-1, 1] -> [0, 255]
        return pixels.unflatten(0, (b, t)).permute(0, 1, 3, 4, 2).contiguous()
