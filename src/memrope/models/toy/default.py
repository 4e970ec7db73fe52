"""The embedded default model: what ``memrope generate`` runs when no checkpoint is given.

The ``toy`` Wan config trained on the procedural toy world (see ``train.py`` and ``MODEL_CARD.md``),
its per-frame autoencoder's decoder (64x64 frames, one video frame per latent frame) and the world
text encoder (hashed word vectors; prompts use the world's vocabulary, see ``prompts.py``). The
weights ship inside the package as ``toy_world.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..bundle import ModelBundle
from ..pixels import DEFAULT_PIXELS
from ..wan import WanModel
from ..wan_config import wan_config
from .autoencoder import FrameAutoencoder, WorldDecoder
from .text import world_text_encoder

DEFAULT_CONFIG = "toy"
DEFAULT_LATENT_HW = (8, 8)  # 64x64 pixels through the 8x autoencoder
WEIGHTS_FILE = Path(__file__).with_name("toy_world.safetensors")
TRANSFORMER_PREFIX = "transformer."
AUTOENCODER_PREFIX = "autoencoder."


def read_weights(path: Path = WEIGHTS_FILE) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of the shipped weights; a clear error when the file is missing."""
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(
            f"the embedded default model's weights are missing: {path} does not exist. Reinstall "
            "memrope, or rebuild them with `python -m memrope.world.train` (see MODEL_CARD.md)."
        )
    tensors = {}
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("memrope", "{}"))
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
    return tensors, meta


def section(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_default(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 decode_device: str | torch.device | None = None, pixels: str = DEFAULT_PIXELS) -> ModelBundle:
    cfg = wan_config(DEFAULT_CONFIG)
    tensors, meta = read_weights()
    model = WanModel(cfg)
    model.load_state_dict(section(tensors, TRANSFORMER_PREFIX), strict=True)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    autoencoder = FrameAutoencoder()
    autoencoder.load_state_dict(section(tensors, AUTOENCODER_PREFIX), strict=True)
    autoencoder = autoencoder.to(device=decode_device or device).eval()  # fp32 whatever the model dtype
    chain = meta.get("chain") or {"runs": 1, "transformer_steps": meta.get("steps_done", "?")}
    steps = f"{chain['transformer_steps']} steps in {chain['runs']} runs" if chain["runs"] > 1 \
        else f"{chain['transformer_steps']} steps"
    return ModelBundle(
        model=model,
        text_encoder=world_text_encoder(meta.get("text_encoder", ""), cfg.text_len, cfg.text_dim),
        decoder=WorldDecoder(autoencoder, pixels),
        latent_hw=DEFAULT_LATENT_HW,
        name=f"{DEFAULT_CONFIG} world model (trained, {steps}, training seed {meta.get('seed', '?')})",
        threads=1,
    )
