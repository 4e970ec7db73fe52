"""TAEHV, the tiny video autoencoder, as a streaming decoder of Wan 2.1 latents (``taew2_1.pth``).

Fast systems decode Self-Forcing's latents with TAEHV instead of the Wan VAE (about 1% of its
decoder FLOPs; Self-Forcing's demo offers it). This module rebuilds its decoder from the facts of
``madebyollin/taehv@1f14a56 taehv.py`` (also copied as ``guandeh17/Self-Forcing@33593df
demo_utils/taehv.py``), in the parameter layout of the released ``taew2_1.pth``:

- ``decoder`` is one ``Sequential`` of 23 layers, so a weight is named by its index:
  ``decoder.1`` conv latent -> 256, then three stages of (3 memory blocks, a 2x nearest upsample, a
  temporal grow, a conv to the next width): widths 256 / 128 / 64 / 64, temporal grows 1 / 2 / 2;
  ``decoder.22`` conv 64 -> RGB. A memory block (``decoder.N.conv.{0,2,4}``) sees its input frame
  concatenated with the *previous* frame's input (zeros before the first frame); a temporal grow
  (``decoder.N.conv``, 1x1, no bias) turns each frame into ``stride`` frames (output channels
  ``[j C, (j + 1) C)`` are frame j). The file also holds the encoder (``encoder.*``), unused here.
- Latents go in exactly as the diffusion model makes them (TAEHV applies no latent mean / std, the
  Wan VAE does); pixels come out in [0, 1].
- Frame counts: the three grows multiply time by 4 and the first ``4 - 1 = 3`` decoded frames of a
  stream are startup frames that upstream trims (``frames_to_trim``), so N latent frames give
  ``4 N - 3 = 1 + 4 (N - 1)`` frames: the Wan VAE's count, chunk by chunk (first chunk of F
  latents ``1 + 4 (F - 1)``, later ones ``4 F``), so the rest of the pipeline needs no change.

Streaming: the only state across frames is each memory block's previous input frame (no temporal
pooling in the decoder), so a chunk is decoded with all its frames in parallel, each memory block
reading the previous chunk's last frame as the past of its first one. That equals a one-shot
decode of the whole video (tested against a frame-at-a-time implementation written in the test),
and the state (nine frames of activations, ~67 MB in bf16 at 832x480) is saved in checkpoints.
Deviations from upstream: no temporal-grow patching for previews (``decoder_time_upscale``
switched off), since the pipeline's frame counts depend on the full 4x; activations are not
modified in place (the memory blocks keep their inputs as state).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .pixels import DEFAULT_PIXELS, check_pixels, quantise
from .weight_files import WeightFileError, check_state_dict, read_state_dict

TAEW21_FILE = "taew2_1.pth"
"""The released TAEHV weights for Wan 2.1 latents (madebyollin/taehv)."""
TAEHV_FORMAT = (
    "TAEHV weights for Wan 2.1 (taew2_1.pth / .safetensors: keys like decoder.1.weight, "
    "decoder.3.conv.0.weight, decoder.7.conv.weight, decoder.22.weight)"
)
CLAMP_SCALE = 3.0  # decoder.0: latents soft-clamped to tanh(x / 3) * 3 (upstream ``Clamp``)
STAGES = 3  # upsampling stages of the decoder
BLOCKS_PER_STAGE = 3  # memory blocks per stage
IMAGE_CHANNELS = 3
_ENCODER_PREFIX = "encoder."


@dataclass(frozen=True)
class TAEHVConfig:
    """Decoder sizes; the defaults are ``taew2_1.pth``. ``widths``: the four stage widths;
    ``time_grow``: frames each stage's temporal grow makes of one (Wan 2.1: 1, 2, 2)."""

    latent_channels: int = 16
    widths: tuple[int, int, int, int] = (256, 128, 64, 64)
    time_grow: tuple[int, int, int] = (1, 2, 2)

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "time_grow", tuple(self.time_grow))
        if len(self.widths) != STAGES + 1 or min(self.widths) < 1 or self.latent_channels < 1:
            raise ValueError(f"TAEHVConfig: {STAGES + 1} positive widths and latent channels needed, got {self}")
        if len(self.time_grow) != STAGES or min(self.time_grow) < 1:
            raise ValueError(f"TAEHVConfig: time_grow needs {STAGES} factors >= 1, got {self.time_grow}")

    @property
    def temporal_stride(self) -> int:
        """Video frames per latent frame (4 for taew2_1, the Wan VAE's factor)."""
        n = 1
        for g in self.time_grow:
            n *= g
        return n

    @property
    def frames_to_trim(self) -> int:
        """Startup frames dropped at the head of a stream: the first latent gives one frame."""
        return self.temporal_stride - 1

    @property
    def spatial_factor(self) -> int:
        return 2**STAGES


def conv3(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class SoftClamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / CLAMP_SCALE) * CLAMP_SCALE


class MemoryBlock(nn.Module):
    """relu(conv(cat(x, past)) + x): three 3x3 convs over the frame and the previous frame's input."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Sequential(conv3(2 * channels, channels), nn.ReLU(), conv3(channels, channels), nn.ReLU(),
                                  conv3(channels, channels))

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(torch.cat([x, past], dim=1)) + x)


class TimeGrow(nn.Module):
    """[N, C, H, W] -> [N * stride, C, H, W]: a 1x1 conv to ``stride`` frames' channels, frame-major."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return self.conv(x).reshape(n * self.stride, c, h, w)


class TAEHVDecoderNet(nn.Module):
    """The decoder half of TAEHV, parameters under ``decoder.<index>`` as in the released files."""

    def __init__(self, config: TAEHVConfig):
        super().__init__()
        self.config = config
        w = config.widths
        layers: list[nn.Module] = [SoftClamp(), conv3(config.latent_channels, w[0]), nn.ReLU()]
        for stage in range(STAGES):
            layers += [MemoryBlock(w[stage]) for _ in range(BLOCKS_PER_STAGE)]
            layers += [nn.Upsample(scale_factor=2), TimeGrow(w[stage], config.time_grow[stage]),
                       conv3(w[stage], w[stage + 1], bias=False)]
        layers += [nn.ReLU(), conv3(w[STAGES], IMAGE_CHANNELS)]
        self.decoder = nn.Sequential(*layers)

    def memory_layers(self) -> list[int]:
        return [i for i, layer in enumerate(self.decoder) if isinstance(layer, MemoryBlock)]

    def run(self, x: torch.Tensor, memory: dict[int, torch.Tensor]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Frames ``x`` [B, T, C, h, w] (in stream order) -> pixels [B, T * stride, 3, H, W] in [0, 1],
        given each memory block's previous input frame (``memory``; absent: the stream's start).
        Returns the pixels and the new memory (the last frame each memory block saw)."""
        b, t = x.shape[:2]
        h = x.flatten(0, 1)  # [B*T, C, h, w], frame-major within each sample
        new_memory = {}
        for i, layer in enumerate(self.decoder):
            if isinstance(layer, MemoryBlock):
                frames = h.unflatten(0, (b, t))  # [B, T, C, H, W]
                before = memory.get(i)
                first = torch.zeros_like(frames[:, :1]) if before is None else before.unsqueeze(1)
                past = torch.cat([first, frames[:, :-1]], dim=1)  # each frame's previous frame
                new_memory[i] = frames[:, -1]
                h = layer(h, past.flatten(0, 1))
            elif isinstance(layer, TimeGrow):
                h = layer(h)
                t *= layer.stride
            else:
                h = layer(h)
        return h.unflatten(0, (b, t)).clamp(0, 1), new_memory


def layout_indices() -> tuple[int, list[tuple[int, int]], int]:
    """Where the layers whose shapes give the sizes sit in ``decoder``: the first conv (1), each stage's
    temporal grow and the conv after it (7/8, 13/14, 19/20) and the RGB conv (22), from a meta build."""
    with torch.device("meta"):
        layers = list(TAEHVDecoderNet(TAEHVConfig()).decoder)
    grows = [i for i, layer in enumerate(layers) if isinstance(layer, TimeGrow)]
    return 1, [(g, g + 1) for g in grows], len(layers) - 1


def config_from_state(state: Mapping[str, torch.Tensor], source: str | Path) -> TAEHVConfig:
    """Widths and temporal grows read off a file's shapes (the released file, or a narrower test build);
    the caller then checks every key and shape against a meta-device build of that config."""
    first_idx, stages, last_idx = layout_indices()
    first, out = f"decoder.{first_idx}.weight", f"decoder.{last_idx}.weight"
    missing = [k for k in (first, out) if k not in state]
    if missing:
        raise WeightFileError(f"{source}: no TAEHV decoder found (missing {', '.join(missing)}); "
                              f"expected {TAEHV_FORMAT}")
    widths = [int(state[first].shape[0])]
    grows = []
    for grow_idx, conv_idx in stages:
        key_g, key_c = f"decoder.{grow_idx}.conv.weight", f"decoder.{conv_idx}.weight"
        for key in (key_g, key_c):
            if key not in state:
                raise WeightFileError(f"{source}: missing {key}; expected {TAEHV_FORMAT}")
        grows.append(max(1, int(state[key_g].shape[0]) // widths[-1]))
        widths.append(int(state[key_c].shape[0]))
    if int(state[out].shape[0]) != IMAGE_CHANNELS:
        raise WeightFileError(f"{source}: the decoder writes {int(state[out].shape[0])} channels, not RGB "
                              f"(a patched TAEHV such as taew2_2 or taehv1_5?); expected {TAEHV_FORMAT}")
    return TAEHVConfig(latent_channels=int(state[first].shape[1]), widths=tuple(widths), time_grow=tuple(grows))


class TAEHVStreamingDecoder:
    """The ``LatentDecoder`` for ``--decoder taehv``: latent chunks [B, C, F, h, w] -> uint8 frames
    [B, T, H, W, 3] on the CPU, with the causal state carried across chunks (see module doc)."""

    def __init__(self, net: TAEHVDecoderNet, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 pixels: str = DEFAULT_PIXELS):
        self.config = net.config
        self.pixels = check_pixels(pixels)  # uint8 quantisation of decode() (memrope.models.pixels)
        self.device = torch.device(device)
        self.dtype = dtype
        self.net = net.to(device=self.device, dtype=dtype).eval().requires_grad_(False)
        self._memory_layers = net.memory_layers()
        self.reset()

    # the factors the generator and the CLI ask a decoder for
    @property
    def temporal_stride(self) -> int:
        return self.config.temporal_stride

    @property
    def spatial_factor(self) -> int:
        return self.config.spatial_factor

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    def frames_for(self, latent_frames: int, first: bool) -> int:
        return self.temporal_stride * latent_frames - (self.config.frames_to_trim if first else 0)

    def reset(self) -> None:
        """Forget the stream: the next chunk starts a new video."""
        self._memory: dict[int, torch.Tensor] = {}
        self._frames_out = 0  # decoded frames of this stream, trimmed ones included

    @torch.no_grad()
    def decode_float(self, latents: torch.Tensor) -> torch.Tensor:
        """A chunk -> float pixels [B, T, 3, H, W] in [0, 1] on the decoder's device, continuing the stream."""
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be [B, {self.latent_channels}, F, h, w], got {tuple(latents.shape)}")
        if latents.shape[2] == 0:
            raise ValueError("latents chunk has no frames")
        x = latents.to(device=self.device, dtype=self.dtype).transpose(1, 2)  # [B, F, C, h, w]
        pixels, self._memory = self.net.run(x, self._memory)
        trim = max(0, self.config.frames_to_trim - self._frames_out)
        self._frames_out += pixels.shape[1]
        return pixels[:, trim:]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """A chunk -> uint8 frames [B, T, H, W, 3] on the CPU: [0, 1] pixels mapped to the [-1, 1] of
        every other decoder (as Self-Forcing's demo wraps TAEHV: ``2 x - 1``), then the run's quantisation."""
        pixels = self.decode_float(latents).float().mul_(2).sub_(1)
        return quantise(pixels, self.pixels).permute(0, 1, 3, 4, 2).contiguous().cpu()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Each memory block's last input frame (``memory.<layer>``) and the frames decoded so far."""
        state = {f"memory.{i}": t.contiguous() for i, t in self._memory.items()}
        state["frames_decoded"] = torch.tensor(self._frames_out, dtype=torch.int64)
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if "frames_decoded" not in state:
            raise ValueError("not a TAEHV decoder state: needs frames_decoded")
        memory = {}
        for key, t in state.items():
            if key == "frames_decoded":
                continue
            layer = int(key.removeprefix("memory."))
            if not key.startswith("memory.") or layer not in self._memory_layers:
                raise ValueError(f"TAEHV decoder state: unexpected entry {key}")
            memory[layer] = t.to(device=self.device, dtype=self.dtype)
        self._memory = memory
        self._frames_out = int(state["frames_decoded"])

    @classmethod
    def from_file(cls, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                  pixels: str = DEFAULT_PIXELS) -> TAEHVStreamingDecoder:
        """Load ``taew2_1.pth`` (or its safetensors copy), validated against a meta-device build first."""
        state = read_state_dict(path, TAEHV_FORMAT)
        decoder_state = {k: v for k, v in state.items() if not k.startswith(_ENCODER_PREFIX)}
        config = config_from_state(decoder_state, path)
        with torch.device("meta"):
            net = TAEHVDecoderNet(config)
        check_state_dict(decoder_state, {k: v.shape for k, v in net.state_dict().items()}, path, TAEHV_FORMAT)
        bad = [k for k, v in decoder_state.items() if not torch.isfinite(v).all()]
        if bad:
            raise WeightFileError(f"{path}: non-finite values in {', '.join(sorted(bad)[:5])}; expected {TAEHV_FORMAT}")
        net.load_state_dict(decoder_state, strict=True, assign=True)
        return cls(net, device, dtype, pixels)
