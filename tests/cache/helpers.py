"""Drive a KVCache by hand with known K/V, without a model."""

from __future__ import annotations

import torch

from memrope.cache import CacheGeometry, KVCache, make_policy
from memrope.rope import Rope3D, apply_rope

GRID = (2, 3)
HEADS, HEAD_DIM, LAYERS, CHUNK = 2, 12, 2, 3


def geometry(batch: int = 1) -> CacheGeometry:
    return CacheGeometry(num_layers=LAYERS, batch=batch, heads=HEADS, head_dim=HEAD_DIM, grid=GRID,
                         chunk_frames=CHUNK)


def make_cache(policy: str, **options) -> KVCache:
    return KVCache(make_policy(policy, options), geometry(), Rope3D(HEAD_DIM))


def frame_kv(frame_idx: int, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic, distinct unrotated K and V for one frame: [1, tokens, H, D]."""
    gen = torch.Generator().manual_seed(1000 * frame_idx + layer)
    tokens = GRID[0] * GRID[1]
    return (torch.randn(1, tokens, HEADS, HEAD_DIM, generator=gen),
            torch.randn(1, tokens, HEADS, HEAD_DIM, generator=gen))


def chunk_kv(first: int, layer: int):
    ks, vs = zip(*(frame_kv(first + j, layer) for j in range(CHUNK)))
    return torch.cat(ks, 1), torch.cat(vs, 1)


def run_chunk(cache: KVCache, read_passes: int = 0):
    """Plan a chunk, run `read_passes` reads with junk K/V, then commit the frames' true K/V (their
    keys doubling as the queries a scoring policy reads)."""
    plan = cache.begin_chunk(CHUNK)
    for _ in range(read_passes):
        for layer in range(LAYERS):
            junk = torch.randn(1, CHUNK * GRID[0] * GRID[1], HEADS, HEAD_DIM)
            cache.update(layer, junk, junk, k_raw=junk)
    for layer in range(LAYERS):
        k, v = chunk_kv(plan.first_frame, layer)
        cache.update(layer, apply_rope(k, cache.query_freqs), v, k_raw=k, commit=True, q_raw=k)
    cache.end_chunk()
    return plan
