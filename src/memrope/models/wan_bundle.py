"""A real Wan2.1 bundle: Self-Forcing / LongLive / diffusers transformer + streaming Wan VAE + cached umT5.

``memrope generate --model ...`` lands here through :func:`memrope.models.loading.load_bundle`. The three
parts come from two places: the transformer from ``--checkpoint`` (+ ``--lora``), the VAE and the text
encoder from ``--wan-dir``, a Wan2.1-T2V-1.3B folder in either layout:

- original: ``Wan2.1_VAE.pth``, ``models_t5_umt5-xxl-enc-bf16.pth``, ``google/umt5-xxl/``, ``config.json``;
- diffusers: ``vae/``, ``text_encoder/``, ``tokenizer/``, ``transformer/config.json``.

umT5-XXL (5.7 B parameters) must never share memory with the video model, so the text encoder here is a
thin front of the on-disk prompt-embedding cache: it builds umT5 only for prompts the cache lacks and frees
it right after (``memrope encode-prompts`` fills the cache beforehand, see :func:`encode_prompts_to_cache`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .bundle import BundleOptions, ModelBundle
from .checkpoints import load_transformer
from .pixels import DEFAULT_PIXELS
from .prompt_cache import PromptEmbeddingCache, encode_prompts_cached
from .taehv import TAEW21_FILE, TAEHVStreamingDecoder
from .text import (
    DIFFUSERS_TEXT_ENCODER,
    DIFFUSERS_TOKENIZER,
    WAN_T5_CHECKPOINT,
    WAN_T5_TOKENIZER,
    WAN_TEXT_LEN,
    UMT5EncoderFactory,
)
from .vae import ORIGINAL_VAE_FORMAT, WanStreamingDecoder, WanVAEConfig
from .wan_config import WAN_CONFIGS
from .wan_layout import read_dit_config
from .weight_files import WeightFileError, read_state_dict

PROMPT_CACHE_DIRNAME = ".memrope-prompt-cache"
# File names of a Wan2.1-T2V folder (Wan-Video/Wan2.1@9737cba ``wan/configs``: ``vae_checkpoint``) and its
# diffusers copy.
WAN_VAE_FILE = "Wan2.1_VAE.pth"
WAN_DIT_CONFIG = "config.json"
DIFFUSERS_VAE, DIFFUSERS_TRANSFORMER = "vae", "transformer"
# Wan runs umT5 in bf16 (Wan2.1 ``t5_dtype``), and the prompt cache stores bf16 anyway.
TEXT_ENCODER_DTYPE = torch.bfloat16
# Tensors of the original VAE file that reveal its width and latent channels (``_video_vae`` layout).
_VAE_WIDTH_KEY, _VAE_LATENT_KEY = "encoder.conv1.weight", "conv2.weight"


@dataclass(frozen=True)
class WanFolder:
    """Where the VAE, the umT5 encoder and the DiT config of a Wan2.1 folder are, in either layout."""

    root: Path
    vae_layout: str  # "original" | "diffusers"
    text_layout: str  # "wan" (original .pth) | "diffusers"
    dit_config: Path | None

    @classmethod
    def inspect(cls, wan_dir: str | Path) -> WanFolder:
        root = Path(wan_dir)
        if not root.is_dir():
            raise WeightFileError(f"{root}: no such folder (expected a Wan2.1-T2V-1.3B folder for --wan-dir)")
        if (root / WAN_VAE_FILE).is_file():
            vae = "original"
        elif (root / DIFFUSERS_VAE / "config.json").is_file():
            vae = "diffusers"
        else:
            raise WeightFileError(
                f"{root}: no Wan VAE found (looked for {WAN_VAE_FILE} and {DIFFUSERS_VAE}/config.json)"
            )
        if (root / WAN_T5_CHECKPOINT).is_file() and (root / WAN_T5_TOKENIZER).is_dir():
            text = "wan"
        elif (root / DIFFUSERS_TEXT_ENCODER).is_dir() and (root / DIFFUSERS_TOKENIZER).is_dir():
            text = "diffusers"
        else:
            raise WeightFileError(
                f"{root}: no umT5 text encoder found (looked for {WAN_T5_CHECKPOINT} + {WAN_T5_TOKENIZER}/ "
                f"and {DIFFUSERS_TEXT_ENCODER}/ + {DIFFUSERS_TOKENIZER}/)"
            )
        configs = (root / WAN_DIT_CONFIG, root / DIFFUSERS_TRANSFORMER / "config.json")
        return cls(root, vae, text, next((c for c in configs if c.is_file()), None))

    def text_encoder_factory(
        self, device: torch.device | str, text_len: int, dtype: torch.dtype = TEXT_ENCODER_DTYPE
    ) -> UMT5EncoderFactory:
        make = UMT5EncoderFactory.from_wan_dir if self.text_layout == "wan" else UMT5EncoderFactory.from_diffusers_dir
        return make(self.root, device=str(device), dtype=dtype, text_len=text_len)

    def decoder(self, device: torch.device | str, dtype: torch.dtype, pixels: str = DEFAULT_PIXELS) -> WanVideoDecoder:
        if self.vae_layout == "diffusers":
            return WanVideoDecoder(
                WanStreamingDecoder.from_diffusers_dir(self.root / DIFFUSERS_VAE, device, dtype, pixels=pixels))
        path = self.root / WAN_VAE_FILE
        config = original_vae_config(path)
        return WanVideoDecoder(WanStreamingDecoder.from_wan_pth(path, device, dtype, config=config, pixels=pixels))


def original_vae_config(path: Path) -> WanVAEConfig:
    """The VAE architecture of an original-layout file: the released one, or a narrower test build.

    The original file carries no config; its width is the first encoder conv's output channels. Its latent
    statistics are the Wan 2.1 constants, which exist for 16 latent channels only.
    """
    state = read_state_dict(path, ORIGINAL_VAE_FORMAT)  # memory-mapped: cheap even for the real file
    default = WanVAEConfig()
    if _VAE_WIDTH_KEY not in state or _VAE_LATENT_KEY not in state:
        return default  # from_wan_pth's key check names what is missing
    base_dim, z_dim = int(state[_VAE_WIDTH_KEY].shape[0]), int(state[_VAE_LATENT_KEY].shape[0])
    if z_dim != default.z_dim:
        raise WeightFileError(
            f"{path}: a VAE with {z_dim} latent channels; the original layout carries no latent statistics "
            f"and Wan2.1's exist for {default.z_dim} only (use a diffusers vae/ folder)"
        )
    return default if base_dim == default.base_dim else WanVAEConfig(base_dim=base_dim)


class WanVideoDecoder:
    """A :class:`WanStreamingDecoder` plus the factors the generator and the CLI ask for.

    ``temporal_stride`` (pixel frames per latent frame after the first: 4 for Wan 2.1) sizes the video and
    ``spatial_factor`` (8) turns ``--height/--width`` into the latent grid.
    """

    def __init__(self, inner: WanStreamingDecoder) -> None:
        self.inner = inner

    @property
    def temporal_stride(self) -> int:
        return self.inner.config.temporal_factor

    @property
    def spatial_factor(self) -> int:
        return self.inner.config.spatial_factor

    @property
    def latent_channels(self) -> int:
        return self.inner.latent_channels

    @property
    def pixels(self) -> str:
        return self.inner.pixels

    def reset(self) -> None:
        self.inner.reset()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, F, h, w] -> uint8 [B, T, H, W, 3] on the CPU, continuing the stream."""
        return self.inner.decode(latents)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.inner.state_dict()

    def load_state_dict(self, state) -> None:
        self.inner.load_state_dict(state)


class CachedPromptEncoder:
    """The bundle's text encoder: prompt embeddings from the cache, umT5 only for a miss (then freed)."""

    def __init__(self, factory: UMT5EncoderFactory, cache_dir: Path, text_dim: int) -> None:
        self.factory = factory
        self.cache_dir = Path(cache_dir)
        self.text_len = factory.text_len
        self.text_dim = text_dim
        self.truncated: list[str] = []

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """[B, text_len, text_dim] float32, zero past each prompt's length."""
        emb = encode_prompts_cached(list(prompts), self.cache_dir, self.factory)  # [B, text_len, D]
        if emb.shape[1:] != (self.text_len, self.text_dim):
            raise ValueError(
                f"text encoder in {self.factory.weights} gives [{emb.shape[1]}, {emb.shape[2]}] embeddings, "
                f"the transformer expects [{self.text_len}, {self.text_dim}]"
            )
        # A prompt whose last position is non-zero filled the context: the tokenizer may have cut it.
        self.truncated = [p for p, e in zip(prompts, emb, strict=True) if bool(e[-1].any())]
        return emb


def latent_size(height: int, width: int, spatial_factor: int, patch: tuple[int, int, int]) -> tuple[int, int]:
    """``(height, width)`` in pixels -> latent ``(h, w)``; both must land on whole VAE cells and patches."""
    _, ph, pw = patch
    step_h, step_w = spatial_factor * ph, spatial_factor * pw
    if height % step_h or width % step_w:
        why = f"VAE factor {spatial_factor}" + (f" x patch {ph}x{pw}" if (ph, pw) != (1, 1) else "")
        raise ValueError(
            f"--height {height} / --width {width} must be multiples of {step_h} / {step_w} ({why}); "
            f"e.g. {height // step_h * step_h or step_h}x{width // step_w * step_w or step_w}"
        )
    return height // spatial_factor, width // spatial_factor


def default_prompt_cache(wan_dir: str | Path) -> Path:
    return Path(wan_dir) / PROMPT_CACHE_DIRNAME


def load_wan_bundle(options: BundleOptions, device: torch.device, dtype: torch.dtype,
                    decode_device: torch.device | None = None) -> ModelBundle:
    """Transformer from ``options.checkpoint`` (+ LoRA), VAE and text encoder from ``options.wan_dir``.

    The model size is read off the checkpoint's shapes (a named config such as ``wan-1.3b``), else from
    the Wan folder's DiT ``config.json``; everything is validated before the model is materialised.
    """
    if options.checkpoint is None or options.wan_dir is None:
        raise ValueError(f"--model {options.model} needs --checkpoint and --wan-dir")
    if options.model == "longlive" and options.lora is None:
        raise ValueError("--model longlive needs --lora lora.pt (the base alone is not the released generator)")
    folder = WanFolder.inspect(options.wan_dir)
    fallback = read_dit_config(folder.dit_config) if folder.dit_config else None
    # The decoder first: it is small, and a bad --height/--width fails before the transformer is read.
    if options.decoder == "taehv":
        weights = options.decoder_weights or folder.root / TAEW21_FILE
        decoder = TAEHVStreamingDecoder.from_file(weights, decode_device or device, dtype, options.pixels)
    else:
        decoder = folder.decoder(decode_device or device, dtype, options.pixels)
    latent_size(options.height, options.width, decoder.spatial_factor, patch=(1, 1, 1))
    model = load_transformer(
        options.model,
        options.checkpoint,
        lora=options.lora,
        lora_rank=options.lora_rank,
        lora_alpha=options.lora_alpha,
        lora_mode=options.lora_mode,
        use_ema=options.use_ema,
        size=None,
        config_fallback=fallback,
        device=device,
        dtype=dtype,
    )
    cfg = model.config
    if decoder.latent_channels != cfg.out_dim or cfg.in_dim != cfg.out_dim:
        raise ValueError(
            f"the VAE in {folder.root} has {decoder.latent_channels} latent channels but the transformer "
            f"{options.checkpoint} reads {cfg.in_dim} and writes {cfg.out_dim}"
        )
    latent_hw = latent_size(options.height, options.width, decoder.spatial_factor, cfg.patch)
    cache_dir = options.prompt_cache or default_prompt_cache(folder.root)
    text = CachedPromptEncoder(folder.text_encoder_factory(device, cfg.text_len), cache_dir, cfg.text_dim)
    parts = Path(options.checkpoint).name + (f" + {Path(options.lora).name} ({options.lora_mode})"
                                             if options.lora else "")
    parts += "; TAEHV decoder" if options.decoder == "taehv" else ""
    size = next((name for name, named in WAN_CONFIGS.items() if named == cfg), f"{cfg.dim}x{cfg.num_layers}")
    return ModelBundle(
        model=model,
        text_encoder=text,
        decoder=decoder,
        latent_hw=latent_hw,
        name=f"{options.model} ({parts}; size {size}; {str(dtype).removeprefix('torch.')})",
    )


def encode_prompts_to_cache(
    wan_dir: str | Path,
    prompts: list[str],
    cache_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = TEXT_ENCODER_DTYPE,
    text_len: int = WAN_TEXT_LEN,
) -> list[Path]:
    """Fill the prompt cache (``memrope encode-prompts``) so later runs never build umT5.

    Returns the cache file of each prompt. ``text_len`` must be the transformer's (512 for Wan2.1): the
    cache key includes it. umT5 is built once, only if some prompt is missing, and freed before returning.
    """
    folder = WanFolder.inspect(wan_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_prompt_cache(folder.root)
    factory = folder.text_encoder_factory(device, text_len, dtype)
    encode_prompts_cached(list(prompts), cache_dir, factory)
    cache = PromptEmbeddingCache(cache_dir, factory.identity)
    return [cache.path(p) for p in prompts]
