"""Size configurations of the causal Wan transformer.

``wan-1.3b`` carries the published Wan2.1-T2V-1.3B dimensions (the Self-Forcing and LongLive
generators); the small ones exist so the same code runs in tests and on a laptop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..rope import ROPE_MAX_POSITIONS, axis_split


@dataclass(frozen=True)
class WanConfig:
    dim: int = 1536
    num_layers: int = 30
    num_heads: int = 12
    ffn_dim: int = 8960
    freq_dim: int = 256
    text_dim: int = 4096  # umT5-XXL hidden size
    text_len: int = 512
    in_dim: int = 16  # latent channels
    out_dim: int = 16
    patch: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    cross_attn_norm: bool = True
    rope_max_positions: int = ROPE_MAX_POSITIONS

    def __post_init__(self) -> None:
        for name in ("dim", "num_layers", "num_heads", "ffn_dim", "freq_dim", "text_dim", "text_len",
                     "in_dim", "out_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"WanConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.num_heads:
            raise ValueError(f"WanConfig: dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.freq_dim % 2:
            raise ValueError(f"WanConfig.freq_dim must be even, got {self.freq_dim}")
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ValueError(f"WanConfig.patch must be three sizes >= 1, got {self.patch}")
        if self.patch[0] != 1:
            raise ValueError("WanConfig.patch[0] must be 1: the cache works in whole latent frames")
        axis_split(self.head_dim)  # raises for head dims RoPE cannot split

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def to_dict(self) -> dict:
        return asdict(self)


WAN_CONFIGS: dict[str, WanConfig] = {
    "wan-1.3b": WanConfig(),
    # Embedded default (random or toy-trained weights): real-time on 2 CPU cores.
    # Trained on the toy world (memrope/world/train.py): 8x8x8 latents of the toy autoencoder, prompts of
    # up to 32 words; a 2048-entry RoPE table so that absolute-position policies (full, sink) can run
    # the 100x-training-window benchmark horizon (1200 latent frames) instead of failing.
    "toy": WanConfig(dim=128, num_layers=4, num_heads=4, ffn_dim=512, freq_dim=64, text_dim=64,
                     text_len=32, in_dim=8, out_dim=8, rope_max_positions=2048),
    # Unit tests: every code path, milliseconds per call.
    "tiny": WanConfig(dim=48, num_layers=2, num_heads=4, ffn_dim=96, freq_dim=16, text_dim=24,
                      text_len=8, in_dim=4, out_dim=4),
}


def wan_config(name: str) -> WanConfig:
    if name not in WAN_CONFIGS:
        raise ValueError(f"unknown model size {name!r}; choose one of {sorted(WAN_CONFIGS)}")
    return WAN_CONFIGS[name]
