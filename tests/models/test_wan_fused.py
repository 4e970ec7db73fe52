"""The fused inference path equals the module path (the readable Wan reference) up to rounding, and
falls back to the module path whenever it could not honour the modules (hooks, wrappers, training)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memrope.cache import make_policy
from memrope.cache.base import KVCache
from memrope.generate import GenerationConfig, StreamingGenerator
from memrope.models.wan import WanModel
from memrope.models.wan_config import wan_config
from memrope.models.wan_fused import BlockModulation, block_forward, patch_embed, rms_norm, rms_norm_fused, rms_scale
from memrope.rope import apply_rope
from memrope.world.train_stages import _fresh_cache_tensors

from ..conftest import TINY_LATENT_HW

CHUNKS = 6  # fills the memrope cache (12 frames) and folds twice


def random_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> WanModel:
    """Tiny model whose norm weights and cross-attention LayerNorm are not the identity, so that a
    path that skipped or mis-bound any of them would show."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WanModel(wan_config("tiny"))
        for name, p in model.named_parameters():
            if "norm" in name:
                p.data = 1 + 0.3 * torch.randn_like(p)
    model = model.eval().requires_grad_(False)
    if dtype != torch.float32:
        for module in model.modules():
            if not isinstance(module, torch.nn.LayerNorm):
                for p in module.parameters(recurse=False):
                    p.data = p.data.to(dtype)
    return model


def text_for(model: WanModel, batch: int = 1):
    cfg = model.config
    ctx = torch.randn(batch, cfg.text_len, cfg.text_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model.encode_text(ctx)


def video(model: WanModel, policy: str = "memrope", batch: int = 1, hook: bool = False,
          chunks: int = CHUNKS) -> tuple[torch.Tensor, bool]:
    """Latents of ``chunks`` chunks, and whether the generator ran the fused path."""
    handle = None
    if hook:  # a forward hook that changes nothing but must be honoured: forces the module path
        handle = model.blocks[0].self_attn.q.register_forward_hook(lambda m, i, o: o)
    try:
        gen = StreamingGenerator(model, make_policy(policy), text_for(model, batch),
                                 GenerationConfig(latent_hw=TINY_LATENT_HW, batch=batch, seed=5))
        latents = torch.cat([gen.next_chunk().latents for _ in range(chunks)], dim=2)
        return latents, gen._fused is not None
    finally:
        if handle is not None:
            handle.remove()


@pytest.mark.parametrize("policy", ["memrope", "sliding_window", "deep_forcing"])
@pytest.mark.parametrize("batch", [1, 2])
def test_fused_path_equals_module_path(policy, batch):
    model = random_model()
    fused, ran_fused = video(model, policy, batch)
    modules, ran_fused_hooked = video(model, policy, batch, hook=True)
    assert ran_fused and not ran_fused_hooked
    torch.testing.assert_close(fused, modules, rtol=1e-4, atol=1e-4)


DEEP_FORCING_CHUNKS = 14  # its 21-frame window overflows at chunk 7: compressions at chunks 7, 9, 11 and 13


@pytest.mark.parametrize("policy", ["deep_forcing", "deep_forcing_sink_only"])
def test_fused_path_equals_module_path_past_deep_forcings_compressions(policy):
    """Deep Forcing ranks tokens with the unrotated queries of past passes: over 6 chunks (the test above)
    its window never fills, so only a run past several compressions (or sink moves) shows what the
    fused path hands the cache."""
    model = random_model()
    fused, ran_fused = video(model, policy, batch=2, chunks=DEEP_FORCING_CHUNKS)
    modules, ran_fused_hooked = video(model, policy, batch=2, hook=True, chunks=DEEP_FORCING_CHUNKS)
    assert ran_fused and not ran_fused_hooked
    torch.testing.assert_close(fused, modules, rtol=1e-4, atol=1e-4)


def test_fused_path_equals_module_path_in_bf16():
    model = random_model(dtype=torch.bfloat16)
    fused, ran_fused = video(model)
    modules, _ = video(model, hook=True)
    assert ran_fused
    # bf16: the fused path rounds norms and modulation once, Wan twice; over 6 chunks of feedback
    # the two stay within a few bf16 steps of each other on values of order 1
    assert (fused.float() - modules.float()).abs().mean() < 0.05


def test_hooks_are_honoured_not_skipped():
    model = random_model()
    calls = []
    handle = model.blocks[1].ffn[0].register_forward_hook(lambda m, i, o: calls.append(1) or o * 2)
    try:
        hooked, ran_fused = video(model)
    finally:
        handle.remove()
    plain, _ = video(model)
    assert not ran_fused and calls
    assert not torch.allclose(hooked, plain)  # the hook's doubling took effect


def test_binding_follows_in_place_weight_edits_and_replacements():
    model = random_model()
    with torch.no_grad():
        first = model.fused_params()
        assert model.fused_params() is first  # memoised while nothing changed
        model.blocks[0].self_attn.k.weight.add_(0.5)  # a LoRA merge edits in place
        second = model.fused_params()
        assert second is not first
        assert torch.equal(second.blocks[0].w_qkv[48:96], model.blocks[0].self_attn.k.weight)
        model.blocks[1].ffn[2].weight = torch.nn.Parameter(torch.zeros_like(model.blocks[1].ffn[2].weight),
                                                           requires_grad=False)
        assert torch.equal(model.fused_params().blocks[1].w_ffn2, torch.zeros(48, 96))


def test_binding_follows_device_and_dtype_moves():
    """``Module.to`` swaps parameter data without moving versions: the binding must not survive it."""
    model = random_model()
    with torch.no_grad():
        first = model.fused_params()
        model.to(torch.float64)
        moved = model.fused_params()
    assert moved is not first and moved.blocks[0].w_qkv.dtype == torch.float64
    assert moved.w_patch.dtype == torch.float64


def test_training_takes_the_module_path_and_gets_gradients():
    model = random_model().requires_grad_(True)
    assert model.fused_params() is None  # gradients recorded for parameters
    with torch.no_grad():
        assert model.fused_params() is not None
    cache = KVCache(make_policy("full"), model.cache_geometry(1, TINY_LATENT_HW, 3), model.rope)
    cache.begin_chunk(3)
    _fresh_cache_tensors(cache)  # as the toy trainer does: a cache autograd can see through
    x = torch.randn(1, 4, 3, *TINY_LATENT_HW)
    model(x, torch.full((1,), 500.0), text_for(model), cache).square().mean().backward()
    assert model.blocks[0].self_attn.q.weight.grad is not None


def test_per_frame_timesteps_take_the_module_path():
    model = random_model()
    cond = model.condition(torch.tensor([[100.0, 200.0, 300.0]]), 1, 3)
    assert cond.frames == 3 and cond.fused is None
    shared = model.condition(torch.tensor([100.0]), 1, 3)
    assert shared.frames == 1 and shared.fused is not None


def test_patch_embedding_as_a_matmul_equals_the_conv():
    model = random_model()
    x = torch.randn(2, 4, 3, 6, 8)
    with torch.no_grad():
        conv = model.patch_embedding(x).flatten(2).transpose(1, 2)
        torch.testing.assert_close(patch_embed(model.fused_params(), x), conv, rtol=1e-5, atol=1e-5)


def test_rms_norm_in_four_operations_equals_wans():
    x = torch.randn(3, 7, 2, 48) * torch.logspace(-3, 2, 7).view(1, 7, 1, 1)  # tiny to large rows
    w = torch.randn(2, 48)
    eps = 1e-6
    got = rms_norm_fused(x, rms_scale(w), torch.tensor((48 * eps) ** 0.5))
    torch.testing.assert_close(got, rms_norm(x, w, eps), rtol=1e-5, atol=1e-6)


def test_fused_attention_matches_sdpa_reference_closed_form():
    """One pass of the fused block against attention written out by hand (softmax(QK^T/sqrt(d))V)
    for the first layer (first chunk: the context is the chunk itself), to anchor both paths to the
    formula rather than to each other."""
    model = random_model()
    gen = StreamingGenerator(model, make_policy("sliding_window"), text_for(model),
                             GenerationConfig(latent_hw=TINY_LATENT_HW))
    blk = model.blocks[0].self_attn
    x = torch.randn(1, 12, 48)
    with torch.no_grad():
        fused = model.fused_params()
        one, zero = torch.ones(48), torch.zeros(48)
        gate1 = BlockModulation(zero, one, one, zero, one, zero)  # no modulation, FFN gate closed
        cache = gen.cache
        cache.begin_chunk(3)
        out = block_forward(fused.blocks[0], gate1, fused, x, gen.text.k[0], gen.text.v[0], cache, 0, False)
        h = F.layer_norm(x, (48,), None, None, 1e-6)
        q = blk.norm_q(blk.q(h)).view(1, 12, 4, 12)
        k = blk.norm_k(blk.k(h)).view(1, 12, 4, 12)
        v = blk.v(h).view(1, 12, 4, 12)
        q, k = apply_rope(q, cache.query_freqs), apply_rope(k, cache.query_freqs)
        scores = torch.einsum("blhd,bmhd->bhlm", q, k) / 12**0.5
        attn = torch.einsum("bhlm,bmhd->blhd", scores.softmax(-1), v).flatten(2)
        expected = x + blk.o(attn)
        cross = model.blocks[0].cross_attn(model.blocks[0].norm3(expected), gen.text.k[0], gen.text.v[0])
        torch.testing.assert_close(out, expected + cross, rtol=1e-5, atol=1e-5)
