"""Every policy against an independent slow implementation of its released code (``released.py``),
chunk by chunk on the tiny model, through compressions, evictions, cuts, flushes and recaches."""

from __future__ import annotations

import pytest
import torch

from memrope.cache import make_policy
from memrope.generate import GenerationConfig, StreamingGenerator

from ..conftest import TINY_LATENT_HW
from . import released

CHUNKS = 18
BATCH = 2  # Deep Forcing selects tokens per sample
# Prompt changes: one while the window still fills (t = 6 frames), one later, one hard cut.
SWITCHES = {2: False, 9: False, 13: True}

CASES = {
    "full": ("full", {}, lambda g: released.Full(**g)),
    "sliding_window": ("sliding_window", {}, lambda g: released.Window(**g, window=12, sink=0)),
    "attention_sink": ("attention_sink", {}, lambda g: released.Window(**g, window=12, sink=3)),
    "attention_sink_infinite": ("attention_sink_infinite", {},
                                lambda g: released.Window(**g, window=12, sink=3, relative=True)),
    "lol": ("lol", {}, lambda g: released.LoL(**g, window=12, sink=3, jitter=0.8, seed=0)),
    "infinity_rope": ("infinity_rope", {}, lambda g: released.InfinityRoPE(**g, window=6, sink=1)),
    "infinity_rope_paper_flush": ("infinity_rope_paper_flush", {},
                                  lambda g: released.InfinityRoPE(**g, window=6, sink=1, flush_keep=1)),
    "ema_sink": ("ema_sink", {}, lambda g: released.EMASink(**g, window=9, sink=3, alpha=0.999)),
    "ema_sink_strong": ("ema_sink", {"alpha": 0.5}, lambda g: released.EMASink(**g, window=9, sink=3, alpha=0.5)),
    "memrope": ("memrope", {}, lambda g: released.MemRoPE(**g)),
    "memrope_faithful": ("memrope", {"faithful": True}, lambda g: released.MemRoPE(**g, faithful=True)),
    "memrope_spatial": ("memrope", {"reduction": "spatial"}, lambda g: released.MemRoPE(**g, spatial=True)),
    "memrope_adaptive": ("memrope_adaptive", {}, lambda g: released.MemRoPE(**g, spatial=True, adaptive=True)),
    "memrope_switch_reset": ("memrope_switch_reset", {}, lambda g: released.MemRoPE(**g, reset=True)),
    "deep_forcing": ("deep_forcing", {}, lambda g: released.DeepForcing(**g)),
    # The reuse limit binds within 18 chunks only when it is low.
    "deep_forcing_reuse_2": ("deep_forcing", {"max_reuse": 2}, lambda g: released.DeepForcing(**g, max_reuse=2)),
    "deep_forcing_sink_only": ("deep_forcing_sink_only", {},
                               lambda g: released.DeepForcing(**g, sink=14, compression=False)),
}


def texts(model, n):
    gen = torch.Generator().manual_seed(11)
    cfg = model.config
    return [model.encode_text(torch.randn(BATCH, cfg.text_len, cfg.text_dim, generator=gen)) for _ in range(n)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_policy_equals_its_released_semantics_chunk_by_chunk(tiny_model, case):
    name, options, reference = CASES[case]
    t = texts(tiny_model, 1 + len(SWITCHES))
    switches = {k: (t[i + 1], cut) for i, (k, cut) in enumerate(SWITCHES.items())}
    config = GenerationConfig(latent_hw=TINY_LATENT_HW, batch=BATCH, seed=3)
    ours = StreamingGenerator(tiny_model, make_policy(name, options), t[0], config)
    ref = StreamingGenerator(tiny_model, make_policy(name, options), t[0], config)
    cfg = tiny_model.config
    ref.cache = reference(dict(batch=BATCH, heads=cfg.num_heads, head_dim=cfg.head_dim,
                               grid=ours.cache.geometry.grid, layers=cfg.num_layers, chunk=config.chunk_frames))
    pairs = zip(ours.stream(CHUNKS, switches), ref.stream(CHUNKS, switches), strict=True)
    for chunk, (a, b) in enumerate(pairs):
        assert a.stats["query_pos"] == b.stats["query_pos"], f"chunk {chunk}"
        torch.testing.assert_close(a.latents, b.latents, atol=1e-4, rtol=1e-4, msg=f"{case}: chunk {chunk}")
