"""Streaming generation: the chunk loop (denoise -> commit -> decode -> emit).

All per-stream state is explicit and owned here: the KV cache (tensors, slot table, clock), the text
context, the decoder's causal state and the noise. Noise is drawn per chunk from a CPU generator
seeded by (seed, chunk index), so a chunk's noise does not depend on how many chunks came before
in this process - the video is reproducible from the seed, on any device, and a run can resume at
any chunk boundary. (The reference code draws the whole video's initial noise up front, which
needs memory proportional to the video; this is the deliberate deviation.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch

from .cache import CachePolicy, KVCache
from .models.wan import TextContext, WanModel
from .sampling import SamplerConfig, denoising_timesteps, renoise, x0_from_velocity

MASK64 = (1 << 64) - 1


class LatentDecoder(Protocol):
    """Streaming latent -> pixel decoder with causal state carried across chunks."""

    def reset(self) -> None: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, F, h, w] -> uint8 [B, T, H, W, 3]; T = 1 + 4(F-1) on a stream's first call, 4F after."""
        ...


def chunk_seed(seed: int, chunk_index: int) -> int:
    """Independent 63-bit seed per (seed, chunk) via splitmix64 (no cross-chunk RNG coupling)."""
    z = (seed * 0x9E3779B97F4A7C15 + chunk_index + 1) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return (z ^ (z >> 31)) >> 1


@dataclass(frozen=True)
class GenerationConfig:
    latent_hw: tuple[int, int]  # latent frame size (h, w) before patching, e.g. (60, 104) for 480x832
    chunk_frames: int = 3  # num_frame_per_block
    batch: int = 1
    seed: int = 0
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    def __post_init__(self) -> None:
        if self.chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {self.chunk_frames}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if len(self.latent_hw) != 2 or min(self.latent_hw) < 1:
            raise ValueError(f"latent_hw must be (h, w) >= 1, got {self.latent_hw}")


@dataclass
class ChunkResult:
    index: int
    latents: torch.Tensor  # [B, C, F, h, w] clean latents of this chunk
    frames: torch.Tensor | None  # uint8 [B, T, H, W, 3] when a decoder is attached
    stats: dict[str, Any]


class StreamingGenerator:
    """Generates a video chunk by chunk in constant memory (for bounded cache policies)."""

    def __init__(self, model: WanModel, policy: CachePolicy, text: TextContext, config: GenerationConfig,
                 decoder: LatentDecoder | None = None):
        self.model = model
        self.config = config
        self.text = text
        self.decoder = decoder
        geometry = model.cache_geometry(config.batch, config.latent_hw, config.chunk_frames)
        self.cache = KVCache(policy, geometry, model.rope)
        self.timesteps = denoising_timesteps(config.sampler)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        if decoder is not None:
            decoder.reset()

    def set_text(self, text: TextContext) -> None:
        """Switch the prompt from the next chunk on (cross-attention K/V computed by the caller)."""
        self.text = text

    def chunk_noise(self, chunk_index: int) -> list[torch.Tensor]:
        """Initial noise then one re-noise draw per later step, on the CPU generator of this chunk."""
        cfg = self.config
        gen = torch.Generator(device="cpu").manual_seed(chunk_seed(cfg.seed, chunk_index))
        shape = (cfg.batch, self.model.config.in_dim, cfg.chunk_frames, *cfg.latent_hw)
        draws = [torch.randn(shape, generator=gen) for _ in self.timesteps]
        return [d.to(device=self.device, dtype=self.dtype) for d in draws]

    @torch.no_grad()
    def next_chunk(self) -> ChunkResult:
        cfg, cache = self.config, self.cache
        start = time.perf_counter()
        plan = cache.begin_chunk(cfg.chunk_frames)
        noise = self.chunk_noise(plan.chunk_index)
        ones = torch.ones(cfg.batch, device=self.device)
        x = noise[0]
        for step, t in enumerate(self.timesteps):
            v = self.model(x, ones * t, self.text, cache, commit=False)
            x0 = x0_from_velocity(x, v, t)
            if step + 1 < len(self.timesteps):
                x = renoise(x0, noise[step + 1], self.timesteps[step + 1])
        self.model(x0, ones * cfg.sampler.context_t, self.text, cache, commit=True)
        cache.end_chunk()
        frames = self.decoder.decode(x0) if self.decoder is not None else None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # once per chunk, so that the timing is honest
        ms = (time.perf_counter() - start) * 1e3
        stats = {
            "index": plan.chunk_index,
            "first_frame": plan.first_frame,
            "latent_frames": plan.n_frames,
            "video_frames": int(frames.shape[1]) if frames is not None else None,
            "ms": round(ms, 3),
            "cache_bytes": cache.nbytes(),
            "cache_frames": plan.n_past + plan.n_frames,
            "max_frame_pos": plan.max_frame_pos,
            "query_pos": list(plan.query_pos),
            "evicted": len(plan.evicted),
        }
        return ChunkResult(index=plan.chunk_index, latents=x0, frames=frames, stats=stats)

    def stream(self, num_chunks: int) -> Iterator[ChunkResult]:
        if num_chunks < 1:
            raise ValueError(f"num_chunks must be >= 1, got {num_chunks}")
        for _ in range(num_chunks):
            yield self.next_chunk()

    def describe(self) -> dict[str, Any]:
        return {
            "policy": self.cache.policy.describe(),
            "generation": {**asdict(self.config), "timesteps": self.timesteps},
            "model": self.model.config.to_dict(),
        }
