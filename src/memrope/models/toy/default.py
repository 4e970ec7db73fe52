"""The embedded default model: what ``memrope generate`` runs when no checkpoint is given.

Until the toy world model is trained and shipped, this is the ``toy`` Wan config with fixed random
weights (seeded, so every install produces the same video for the same seed), the hash text
encoder and the toy decoder. It exercises every part of the streaming path on any CPU.
"""

from __future__ import annotations

import torch

from ..bundle import ModelBundle
from ..wan import WanModel
from ..wan_config import wan_config
from .decoder import ToyDecoder
from .text import HashTextEncoder

DEFAULT_CONFIG = "toy"
DEFAULT_LATENT_HW = (8, 8)  # 64x64 pixels through the 8x toy decoder
WEIGHT_SEED = 0


def load_default(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> ModelBundle:
    cfg = wan_config(DEFAULT_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(WEIGHT_SEED)
        model = WanModel(cfg)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return ModelBundle(
        model=model,
        text_encoder=HashTextEncoder(cfg.text_len, cfg.text_dim),
        decoder=ToyDecoder(cfg.out_dim),
        latent_hw=DEFAULT_LATENT_HW,
        name=f"{DEFAULT_CONFIG} (random weights, seed {WEIGHT_SEED})",
    )
