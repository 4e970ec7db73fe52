import pytest
import torch

from memrope.cache import KVCache, make_policy
from memrope.models.wan import WanModel
from memrope.models.wan_config import WanConfig, wan_config

# Wan2.1-T2V-1.3B as published (config.json of the release; Self-Forcing generator after `model.`).
DIM, LAYERS, FFN, FREQ, TEXT, LATENT, PATCH_OUT = 1536, 30, 8960, 256, 4096, 16, 16 * 1 * 2 * 2

TOP_LEVEL = {
    "patch_embedding.weight": (DIM, LATENT, 1, 2, 2),
    "patch_embedding.bias": (DIM,),
    "text_embedding.0.weight": (DIM, TEXT),
    "text_embedding.0.bias": (DIM,),
    "text_embedding.2.weight": (DIM, DIM),
    "text_embedding.2.bias": (DIM,),
    "time_embedding.0.weight": (DIM, FREQ),
    "time_embedding.0.bias": (DIM,),
    "time_embedding.2.weight": (DIM, DIM),
    "time_embedding.2.bias": (DIM,),
    "time_projection.1.weight": (6 * DIM, DIM),
    "time_projection.1.bias": (6 * DIM,),
    "head.modulation": (1, 2, DIM),
    "head.head.weight": (PATCH_OUT, DIM),
    "head.head.bias": (PATCH_OUT,),
}
PER_BLOCK = {
    "modulation": (1, 6, DIM),
    **{f"{attn}.{p}.weight": (DIM, DIM) for attn in ("self_attn", "cross_attn") for p in "qkvo"},
    **{f"{attn}.{p}.bias": (DIM,) for attn in ("self_attn", "cross_attn") for p in "qkvo"},
    **{f"{attn}.{n}.weight": (DIM,) for attn in ("self_attn", "cross_attn") for n in ("norm_q", "norm_k")},
    "norm3.weight": (DIM,),
    "norm3.bias": (DIM,),
    "ffn.0.weight": (FFN, DIM),
    "ffn.0.bias": (FFN,),
    "ffn.2.weight": (DIM, FFN),
    "ffn.2.bias": (DIM,),
}


def published_table():
    table = dict(TOP_LEVEL)
    for i in range(LAYERS):
        table.update({f"blocks.{i}.{k}": v for k, v in PER_BLOCK.items()})
    return table


def test_wan_1_3b_on_meta_has_exactly_the_self_forcing_generator_layout():
    with torch.device("meta"):
        model = WanModel(wan_config("wan-1.3b"))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = published_table()
    assert sorted(set(got) - set(expected)) == []
    assert sorted(set(expected) - set(got)) == []
    assert got == expected
    n_params = sum(v.numel() for v in model.state_dict().values())
    assert 1.3e9 < n_params < 1.5e9  # "1.3B" by name


def test_config_validation_messages():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        WanConfig(dim=100, num_heads=3)
    with pytest.raises(ValueError, match="patch\\[0\\] must be 1"):
        WanConfig(patch=(2, 2, 2))
    with pytest.raises(ValueError, match="unknown model size"):
        wan_config("wan-14b-typo")


def test_forward_shapes_and_grid_checks(tiny_model, tiny_text):
    geo = tiny_model.cache_geometry(1, (4, 6), chunk_frames=3)
    cache = KVCache(make_policy("full"), geo, tiny_model.rope)
    cache.begin_chunk(3)
    x = torch.randn(1, tiny_model.config.in_dim, 3, 4, 6)
    v = tiny_model(x, torch.tensor([1000.0]), tiny_text, cache)
    assert v.shape == x.shape
    with pytest.raises(ValueError, match="does not match the cache"):
        tiny_model(torch.randn(1, tiny_model.config.in_dim, 3, 4, 4), torch.tensor([1.0]), tiny_text, cache)
    with pytest.raises(ValueError, match="not divisible by the patch"):
        tiny_model.grid_for((5, 4))


def test_text_context_shape_is_checked(tiny_model):
    with pytest.raises(ValueError, match="text context must be"):
        tiny_model.encode_text(torch.zeros(1, 3, 3))


def test_unpatchify_inverts_the_patch_layout(tiny_model):
    # A head output that copies each token's patch back must rebuild the latent exactly.
    cfg = tiny_model.config
    x = torch.randn(2, cfg.out_dim, 3, 4, 6)
    b, c, f, h, w = x.shape
    tokens = x.view(b, c, f, h // 2, 2, w // 2, 2).permute(0, 2, 3, 5, 4, 6, 1)  # [B, F, h, w, ph, pw, c]
    tokens = tokens.reshape(b, f * (h // 2) * (w // 2), 4 * c)
    assert torch.equal(tiny_model.unpatchify(tokens, f, (h // 2, w // 2)), x)


def test_bf16_model_runs_on_cpu(tiny_model, tiny_text):
    import copy

    model = copy.deepcopy(tiny_model).to(torch.bfloat16)
    geo = model.cache_geometry(1, (4, 4), chunk_frames=3)
    cache = KVCache(make_policy("memrope"), geo, model.rope)
    cache.begin_chunk(3)
    text = model.encode_text(torch.zeros(1, model.config.text_len, model.config.text_dim))
    v = model(torch.randn(1, model.config.in_dim, 3, 4, 4), torch.tensor([1000.0]), text, cache)
    assert v.dtype == torch.bfloat16 and torch.isfinite(v.float()).all()
