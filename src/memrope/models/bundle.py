"""What a generation run needs besides the cache policy, and where it comes from.

A bundle pairs a transformer with the text encoder and decoder that belong to it. The embedded
default needs nothing on disk; real Wan2.1 models (Self-Forcing, LongLive) come from checkpoint
files through :mod:`memrope.models.wan_bundle`. The types live here and the loaders import them;
:mod:`memrope.models.loading` picks the loader, so no loader and this module import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from .wan import WanModel


class TextEncoder(Protocol):
    text_len: int
    truncated: list[str]  # prompts that the last encode() had to cut

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """[B, text_len, text_dim] float32, zero past each prompt's length."""
        ...


@dataclass
class ModelBundle:
    model: WanModel
    text_encoder: Any  # TextEncoder
    decoder: Any  # generate.LatentDecoder
    latent_hw: tuple[int, int]
    name: str
    threads: int | None = None  # CPU threads this model runs fastest with (tiny models: 1)


@dataclass(frozen=True)
class BundleOptions:
    """Where the model comes from; ``model=None`` selects the embedded default."""

    model: str | None = None  # "self-forcing" | "longlive" | "diffusers"
    checkpoint: Path | None = None
    wan_dir: Path | None = None
    lora: Path | None = None
    lora_rank: int | None = None
    lora_alpha: float | None = None
    use_ema: bool = True
    height: int = 480
    width: int = 832
    device: str = "auto"
    dtype: str = "auto"
    prompt_cache: Path | None = None
    decode_device: str | None = None  # e.g. cuda:1: the decoder on its own GPU (None: with the model)
    pixels: str = "truncate"  # uint8 quantisation of every decoder (models/pixels.py): truncate | round
    lora_mode: str = "merged"  # LongLive's LoRA: merged into the weights, or unmerged as PEFT runs it
    decoder: str = "vae"  # "vae": the model's own (Wan VAE, toy autoencoder) | "taehv": TAEHV (taew2_1.pth)
    decoder_weights: Path | None = None  # the TAEHV file (default: <wan_dir>/taew2_1.pth)
    split_blocks: str | None = None  # "cuda:0,cuda:1": the transformer's blocks over these devices


DECODERS = ("vae", "taehv")


def check_decoder(options: BundleOptions) -> None:
    """``--decoder`` / ``--decoder-weights`` make sense together and with the model."""
    if options.decoder not in DECODERS:
        raise ValueError(f"--decoder must be one of {', '.join(DECODERS)}, got {options.decoder!r}")
    if options.decoder_weights is not None and options.decoder != "taehv":
        raise ValueError("--decoder-weights names a TAEHV file: add --decoder taehv")
    if options.decoder == "taehv" and options.model is None:
        raise ValueError("--decoder taehv decodes Wan 2.1 latents; the embedded toy model has its own autoencoder "
                         "(use --decoder taehv with --model self-forcing, longlive or diffusers)")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return parse_device(device, "--device")


def parse_device(device: str, option: str) -> torch.device:
    """``device`` as a torch device this machine has, or a ValueError naming ``option``."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"{option} {device!r} is not a device (e.g. cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"{option} {device} requested but this machine has {torch.cuda.device_count()} "
                         f"CUDA device(s)")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in choices:
        raise ValueError(f"--dtype must be auto or one of {sorted(choices)}, got {dtype!r}")
    return choices[dtype]


def resolve_split(split_blocks: str | None, device: str) -> list[torch.device] | None:
    """``--split-blocks DEV,DEV`` -> the devices (the first holds the embeddings and is the model's device)."""
    if split_blocks is None:
        return None
    names = [n.strip() for n in split_blocks.split(",")]
    if len(names) < 2 or not all(names):
        raise ValueError(f"--split-blocks takes two devices separated by a comma (e.g. cuda:0,cuda:1), got "
                         f"{split_blocks!r}")
    devices = []
    for name in names:
        try:
            devices.append(torch.device(name))
        except RuntimeError:
            raise ValueError(f"--split-blocks: {name!r} is not a device (e.g. cpu, cuda:0, cuda:1)") from None
    cuda = [d for d in devices if d.type == "cuda"]
    if cuda and max(d.index or 0 for d in cuda) >= torch.cuda.device_count():
        raise ValueError(f"--split-blocks {split_blocks} requested but this machine has {torch.cuda.device_count()} "
                         f"CUDA device(s)")
    if device != "auto" and torch.device(device) != devices[0]:
        raise ValueError(f"--device {device} conflicts with --split-blocks {split_blocks}: the model's device is the "
                         f"first of the split (drop --device)")
    return devices


def resolve_decode_device(decode_device: str | None, device: torch.device) -> torch.device:
    """The decoder's device: the model's unless named. A second GPU splits the work: the transformer
    generates chunk k + 1 on one while the VAE decodes chunk k on the other (with the overlapped
    decode, ``StreamingGenerator.stream``); decoders move latents to their own device."""
    if decode_device is None:
        return device
    return parse_device(decode_device, "--decode-device")
