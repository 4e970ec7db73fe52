"""torch.compile of the fused path's pure pieces: used in the steady state only, equal to eager to rounding."""

from __future__ import annotations

import pytest
import torch

from memrope.cache import make_policy
from memrope.generate import GenerationConfig, StreamingGenerator
from memrope.models.wan_fused import EAGER, rope_pairs
from memrope.rope import apply_rope
from tests.conftest import TINY_LATENT_HW


def test_real_rope_equals_the_complex_rotation(tiny_model):
    freqs = tiny_model.rope.freqs(torch.tensor([3, 7, 11]), (2, 2))
    x = torch.randn(2, freqs.tokens, 4, tiny_model.config.head_dim, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rope_pairs(x, freqs.cos, freqs.sin), apply_rope(x, freqs), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("policy", ["memrope", "sliding_window"])
def test_compiled_steady_state_equals_eager(tiny_model, tiny_text, policy):
    torch._dynamo.reset()
    cfg = GenerationConfig(TINY_LATENT_HW)
    eager = StreamingGenerator(tiny_model, make_policy(policy), tiny_text, cfg)
    compiled = StreamingGenerator(tiny_model, make_policy(policy), tiny_text, cfg, compile=True)
    assert eager.kernels is EAGER and compiled.kernels.name == "compiled (default)"
    fill = make_policy(policy).capacity_frames(cfg.chunk_frames) // cfg.chunk_frames - 1  # chunks before full
    for k in range(fill + 3):
        a, b = eager.next_chunk().latents, compiled.next_chunk().latents
        if k < fill:
            assert torch.equal(a, b)  # the cache fills: eager kernels in both
        else:
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
