"""Streaming Wan 2.1 VAE decoder: latent chunks in, uint8 frames out, no seams between chunks.

The Wan VAE decoder is causal in time: every 3D convolution looks back at most two frames, and diffusers'
``AutoencoderKLWan`` already decodes one latent frame at a time with a per-convolution *feature cache*
holding those frames. Its public ``decode()`` clears that cache on every call, which is right for a whole
clip and wrong for a stream (each chunk would restart the video: lost frames, a visible seam). Here the
decoder is driven frame by frame with a feature cache that lives *across* calls, so decoding chunk after
chunk equals one decode of all latents (tested to <= 1e-5 in fp32), with memory independent of length.

The cache is per-stream state, kept out of the module and exposed via :meth:`WanStreamingDecoder.state_dict`
so a session can be saved and resumed exactly.

Depends on private diffusers internals (the decoder's ``feat_cache`` / ``feat_idx`` / ``first_chunk``
protocol and the ``"Rep"`` marker of the first temporal upsample); they are pinned to
:data:`SUPPORTED_DIFFUSERS` and checked at construction.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from memrope.models.pixels import DEFAULT_PIXELS, PIXEL_MAX, PIXEL_MIN, check_pixels, quantise
from memrope.models.vae_convert import diffusers_to_wan_vae_keys
from memrope.models.weight_files import WeightFileError, check_state_dict, read_state_dict, read_weight_folder

# diffusers versions whose AutoencoderKLWan decoder internals this module was tested against
# (inclusive lower bound, exclusive upper bound, as (major, minor)). tests/models/test_vae.py passed on
# 0.35.2, 0.36.0, 0.37.1, 0.38.0, 0.39.0, 0.40.0, 0.41.0, 0.42.1; 0.33 / 0.34 lack ``first_chunk``.
SUPPORTED_DIFFUSERS = ((0, 35), (0, 43))

# Latent statistics of the Wan 2.1 VAE (16 channels). Source: Wan-Video/Wan2.1@9737cba ``wan/modules/vae.py``
# (``WanVAE`` mean/std) and the ``latents_mean`` / ``latents_std`` defaults of diffusers' ``AutoencoderKLWan`` config.
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

# The diffusers decoder marks a temporal upsampler that has seen only the first latent frame with this
# string instead of a tensor (the first frame is not temporally upsampled). diffusers
# ``autoencoder_kl_wan.WanResample.forward``.
_FIRST_FRAME_MARKER = "Rep"
# state_dict encoding of one feature-cache slot.
_SLOT_EMPTY, _SLOT_MARKER, _SLOT_TENSOR = 0, 1, 2

ORIGINAL_VAE_FORMAT = (
    "the original Wan2.1 VAE state dict (Wan2.1_VAE.pth; keys like encoder.conv1.weight, "
    "decoder.upsamples.0.residual.0.gamma, conv2.weight)"
)
DIFFUSERS_VAE_FORMAT = (
    "a diffusers AutoencoderKLWan folder (config.json + diffusion_pytorch_model.safetensors)"
)


@dataclass(frozen=True)
class WanVAEConfig:
    """Architecture of a Wan 2.1 VAE; defaults are the released Wan2.1 VAE (``_video_vae`` in Wan2.1)."""

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    latents_mean: tuple[float, ...] = field(default=WAN21_LATENTS_MEAN)
    latents_std: tuple[float, ...] = field(default=WAN21_LATENTS_STD)

    def __post_init__(self) -> None:
        for name in ("dim_mult", "temporal_downsample", "latents_mean", "latents_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.base_dim <= 0 or self.z_dim <= 0 or self.num_res_blocks <= 0:
            raise ValueError(f"WanVAEConfig: base_dim, z_dim, num_res_blocks must be positive, got {self}")
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"WanVAEConfig: temporal_downsample needs len(dim_mult) - 1 = {len(self.dim_mult) - 1} "
                f"entries (one per downsampling level), got {len(self.temporal_downsample)}"
            )
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(
                f"WanVAEConfig: latents_mean/latents_std need z_dim = {self.z_dim} entries, got "
                f"{len(self.latents_mean)}/{len(self.latents_std)}; pass the statistics of this VAE's latents"
            )
        if min(self.latents_std) <= 0:
            raise ValueError("WanVAEConfig: latents_std must be positive")

    @property
    def temporal_factor(self) -> int:
        """Pixel frames per latent frame after the first (4 for Wan 2.1)."""
        return 2 ** sum(self.temporal_downsample)

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent cell along height and width (8 for Wan 2.1)."""
        return 2 ** (len(self.dim_mult) - 1)

    def diffusers_kwargs(self) -> dict:
        """Constructor arguments of diffusers' ``AutoencoderKLWan`` for this architecture."""
        return {
            "base_dim": self.base_dim,
            "z_dim": self.z_dim,
            "dim_mult": list(self.dim_mult),
            "num_res_blocks": self.num_res_blocks,
            "attn_scales": [],
            "temperal_downsample": list(self.temporal_downsample),  # diffusers' spelling
            "dropout": 0.0,
            "latents_mean": list(self.latents_mean),
            "latents_std": list(self.latents_std),
        }

    @classmethod
    def from_diffusers_config(cls, config: Mapping, source: str | Path = "config") -> WanVAEConfig:
        """Read a diffusers ``AutoencoderKLWan`` config; reject variants this decoder does not stream."""
        if config.get("is_residual") or config.get("patch_size") is not None:
            raise WeightFileError(
                f"{source}: a Wan 2.2-style VAE (is_residual / patch_size); only the Wan 2.1 VAE is supported"
            )
        if config.get("attn_scales"):
            raise WeightFileError(
                f"{source}: attn_scales {config['attn_scales']} unsupported (Wan 2.1 uses [])"
            )
        if config.get("decoder_base_dim") not in (None, config.get("base_dim", cls.base_dim)):
            raise WeightFileError(f"{source}: decoder_base_dim != base_dim is not a Wan 2.1 VAE")
        defaults = cls()
        return cls(
            base_dim=config.get("base_dim", defaults.base_dim),
            z_dim=config.get("z_dim", defaults.z_dim),
            dim_mult=tuple(config.get("dim_mult", defaults.dim_mult)),
            num_res_blocks=config.get("num_res_blocks", defaults.num_res_blocks),
            temporal_downsample=tuple(config.get("temperal_downsample", defaults.temporal_downsample)),
            latents_mean=tuple(config.get("latents_mean", defaults.latents_mean)),
            latents_std=tuple(config.get("latents_std", defaults.latents_std)),
        )


def _supported_spec() -> str:
    (lo_major, lo_minor), (hi_major, hi_minor) = SUPPORTED_DIFFUSERS
    return f"diffusers>={lo_major}.{lo_minor},<{hi_major}.{hi_minor}"


def check_diffusers_version(version: str | None = None) -> str:
    """Fail clearly when the installed diffusers is outside the range the streaming protocol was tested on."""
    try:
        version = version or importlib.metadata.version("diffusers")
    except importlib.metadata.PackageNotFoundError as err:
        raise ImportError(
            f"the streaming Wan VAE needs diffusers: pip install '{_supported_spec()}'"
        ) from err
    m = re.match(r"(\d+)\.(\d+)", version)
    low, high = SUPPORTED_DIFFUSERS
    if m is None or not (low <= (int(m[1]), int(m[2])) < high):
        raise ImportError(
            f"diffusers {version} is outside the tested range of WanStreamingDecoder, which drives "
            "private AutoencoderKLWan decoder internals (feat_cache/feat_idx/first_chunk); "
            f"install '{_supported_spec()}'"
        )
    return version


def _build_vae(config: WanVAEConfig, device: torch.device | str) -> torch.nn.Module:
    check_diffusers_version()
    from diffusers import AutoencoderKLWan

    # On the meta device nothing is allocated or initialised; weights are assigned afterwards.
    with torch.device(device):
        return AutoencoderKLWan(**config.diffusers_kwargs())


def _count_cache_slots(decoder: torch.nn.Module) -> int:
    """One feature-cache slot per causal conv of the decoder (diffusers' own count in ``clear_cache``)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    return sum(isinstance(m, WanCausalConv3d) for m in decoder.modules())


class WanStreamingDecoder:
    """Decode normalised latent chunks ``[B, C, F, h, w]`` into uint8 frames ``[B, T, H, W, 3]`` on the CPU.

    The first call of a stream yields ``1 + 4 (F - 1)`` frames, later calls ``4 F`` (Wan 2.1 factors), so a
    stream of ``N`` latent frames yields ``1 + 4 (N - 1)`` frames whatever the chunking.

    The decoder takes ownership of ``vae``: it is moved and cast in place. The causal state holds the last
    two frames of every decoder convolution's input, so it scales with the frame area, not the video length
    (9.7 MB in fp32 for the real architecture at 32x32 pixels; proportionally more at full resolution).
    """

    def __init__(
        self,
        vae: torch.nn.Module,
        config: WanVAEConfig,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        pixels: str = DEFAULT_PIXELS,
    ) -> None:
        check_diffusers_version()
        self.pixels = check_pixels(pixels)  # uint8 quantisation of decode() (memrope.models.pixels)
        params = inspect.signature(vae.decoder.forward).parameters
        if not {"feat_cache", "feat_idx", "first_chunk"} <= set(params):
            raise ImportError(
                "this AutoencoderKLWan decoder lacks feat_cache/feat_idx/first_chunk; "
                f"install '{_supported_spec()}'"
            )
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        # nn.Module.to, not ModelMixin.to: diffusers 0.42 warns about fp32-kept modules on any dtype
        # argument even when the list is empty (AutoencoderKLWan keeps none).
        self.vae = torch.nn.Module.to(vae, device=self.device, dtype=dtype).eval().requires_grad_(False)
        self._n_slots = _count_cache_slots(self.vae.decoder)
        shape = (1, config.z_dim, 1, 1, 1)  # broadcast over [B, C, F, h, w]
        self._mean = torch.tensor(config.latents_mean, dtype=torch.float32, device=self.device).view(shape)
        self._std = torch.tensor(config.latents_std, dtype=torch.float32, device=self.device).view(shape)
        self.reset()

    @property
    def latent_channels(self) -> int:
        return self.config.z_dim

    @property
    def frames_decoded(self) -> int:
        """Latent frames consumed since the last :meth:`reset`."""
        return self._frames_in

    def reset(self) -> None:
        """Forget the causal state: the next chunk starts a new video."""
        self._cache: list[torch.Tensor | str | None] = [None] * self._n_slots
        self._frames_in = 0

    @torch.no_grad()
    def decode_float(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode a chunk to float32 pixels ``[B, 3, T, H, W]`` in [-1, 1], continuing the stream."""
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents must be [B, {self.latent_channels}, F, h, w], got {tuple(latents.shape)}"
            )
        if latents.shape[2] == 0:
            raise ValueError("latents chunk has no frames")
        if self.device.type == "cuda":  # a decoder on its own GPU (--decode-device): allocate there
            with torch.cuda.device(self.device):
                return self._decode_float(latents)
        return self._decode_float(latents)

    def _decode_float(self, latents: torch.Tensor) -> torch.Tensor:
        # De-normalise: the diffusion model works on (z - mean) / std.
        z = latents.to(device=self.device, dtype=torch.float32) * self._std + self._mean
        x = self.vae.post_quant_conv(z.to(self.dtype))  # 1x1x1 conv: per frame, no temporal state
        outs = []
        for i in range(x.shape[2]):
            outs.append(
                self.vae.decoder(
                    x[:, :, i : i + 1],  # [B, C, 1, h, w]
                    feat_cache=self._cache,
                    feat_idx=[0],
                    first_chunk=self._frames_in == 0,
                )
            )
            self._frames_in += 1
        out = torch.cat(outs, dim=2).float()  # [B, 3, T, H, W]
        return out.clamp_(PIXEL_MIN, PIXEL_MAX)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode a chunk to uint8 frames ``[B, T, H, W, 3]`` on the CPU, continuing the stream."""
        return pixels_to_uint8(self.decode_float(latents), self.pixels)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The causal feature cache as a flat dict of tensors (safetensors-ready), on the decoder's device.

        ``slot_kinds[i]`` says whether slot ``i`` is empty, holds the first-frame marker, or a tensor
        ``slot.{i}``; ``frames_decoded`` counts latent frames since :meth:`reset`.
        """
        kinds, state = [], {}
        for i, slot in enumerate(self._cache):
            if slot is None:
                kinds.append(_SLOT_EMPTY)
            elif isinstance(slot, str):
                kinds.append(_SLOT_MARKER)
            else:
                kinds.append(_SLOT_TENSOR)
                state[f"slot.{i}"] = slot.detach().clone(memory_format=torch.contiguous_format)
        state["slot_kinds"] = torch.tensor(kinds, dtype=torch.int8)
        state["frames_decoded"] = torch.tensor(self._frames_in, dtype=torch.int64)
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore a cache from :meth:`state_dict` so the next chunk continues that stream exactly."""
        if "slot_kinds" not in state or "frames_decoded" not in state:
            raise ValueError("not a WanStreamingDecoder state: needs slot_kinds and frames_decoded")
        kinds = state["slot_kinds"].tolist()
        if len(kinds) != self._n_slots:
            raise ValueError(f"state has {len(kinds)} cache slots, this decoder has {self._n_slots}")
        cache: list[torch.Tensor | str | None] = []
        for i, kind in enumerate(kinds):
            if kind == _SLOT_EMPTY:
                cache.append(None)
            elif kind == _SLOT_MARKER:
                cache.append(_FIRST_FRAME_MARKER)
            elif kind == _SLOT_TENSOR and f"slot.{i}" in state:
                cache.append(state[f"slot.{i}"].to(device=self.device, dtype=self.dtype).clone())
            else:
                raise ValueError(f"state slot {i}: kind {kind} without a valid tensor")
        self._cache = cache
        self._frames_in = int(state["frames_decoded"])

    @classmethod
    def from_wan_pth(
        cls,
        path: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        config: WanVAEConfig | None = None,
        pixels: str = DEFAULT_PIXELS,
    ) -> WanStreamingDecoder:
        """Load the original ``Wan2.1_VAE.pth`` (or a safetensors repack with the same keys)."""
        config = config or WanVAEConfig()
        state = read_state_dict(path, ORIGINAL_VAE_FORMAT)
        vae = _build_vae(config, "meta")
        shapes = {k: v.shape for k, v in vae.state_dict().items()}
        to_original = diffusers_to_wan_vae_keys(list(shapes), config.num_res_blocks)
        check_state_dict(state, {to_original[k]: s for k, s in shapes.items()}, path, ORIGINAL_VAE_FORMAT)
        vae.load_state_dict({k: state[to_original[k]] for k in shapes}, strict=True, assign=True)
        return cls(vae, config, device, dtype, pixels)

    @classmethod
    def from_diffusers_dir(
        cls, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
        pixels: str = DEFAULT_PIXELS,
    ) -> WanStreamingDecoder:
        """Load a diffusers ``vae/`` folder offline (its own ``config.json``; no hub look-up)."""
        path = Path(path)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise WeightFileError(f"{config_file}: no such file (expected {DIFFUSERS_VAE_FORMAT})")
        try:
            raw = json.loads(config_file.read_text())
        except json.JSONDecodeError as err:
            raise WeightFileError(
                f"{config_file}: not valid JSON ({err}); expected {DIFFUSERS_VAE_FORMAT}"
            ) from err
        if raw.get("_class_name", "AutoencoderKLWan") != "AutoencoderKLWan":
            raise WeightFileError(f"{config_file}: describes {raw['_class_name']}, expected AutoencoderKLWan")
        config = WanVAEConfig.from_diffusers_config(raw, config_file)
        state = read_weight_folder(path, ("diffusion_pytorch_model",), DIFFUSERS_VAE_FORMAT)
        vae = _build_vae(config, "meta")
        check_state_dict(state, {k: v.shape for k, v in vae.state_dict().items()}, path, DIFFUSERS_VAE_FORMAT)
        vae.load_state_dict(state, strict=True, assign=True)
        return cls(vae, config, device, dtype, pixels)


def pixels_to_uint8(pixels: torch.Tensor, mode: str = DEFAULT_PIXELS) -> torch.Tensor:
    """``[B, 3, T, H, W]`` floats in [-1, 1] -> ``[B, T, H, W, 3]`` uint8 on the CPU.

    ``truncate`` (default) is Wan's ``cache_video`` and Self-Forcing's output; ``round`` is diffusers'
    video post-processing (:mod:`memrope.models.pixels`).
    """
    return quantise(pixels, mode).permute(0, 2, 3, 4, 1).contiguous().cpu()  # [B, T, H, W, 3]
