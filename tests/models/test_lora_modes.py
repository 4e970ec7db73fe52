"""``--lora-mode``: unmerged adapters compute PEFT's forward bit for bit in bf16 (as LongLive and the
MemRoPE reference run it); merged weights equal it in fp32 only; the fused path runs unmerged adapters
or falls back to the module path.

The PEFT side is PEFT itself: ``peft.get_peft_model`` on the same base model with LongLive's targets
(every Linear of every block, NVlabs/LongLive@2462895 ``utils/lora_utils.py``), loaded with
``peft.set_peft_model_state_dict`` from the file's tensors and cast to bf16 as the reference's
``pipeline.to(dtype=torch.bfloat16)`` does.
"""

from __future__ import annotations

import peft
import pytest
import torch

from memrope.cache import KVCache, make_policy
from memrope.generate import GenerationConfig, StreamingGenerator
from memrope.models.checkpoints import load_transformer
from memrope.models.formats.lora import LORA_TARGETS, LoraScale, merge_lora
from memrope.models.lora_linear import LoraLinear, attach_lora
from memrope.models.wan_config import wan_config
from tests.models.tiny_wan_files import lora_pairs, lora_state, original_state, random_wan

from ..conftest import TINY_LATENT_HW

TINY = wan_config("tiny")
RANK, ALPHA = 4, 8.0  # scale 2: a scale of 1 would hide a missing or doubled multiplication
CHUNKS = 5


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    base = random_wan(TINY, 1)
    torch.save({"generator": {f"model.{k}": v for k, v in original_state(base).items()}}, root / "base.pt")
    torch.save({"generator_lora": lora_state(lora_pairs(TINY, RANK)), "lora_alpha": ALPHA}, root / "lora.pt")
    return root


def load(files, mode: str, dtype: torch.dtype):
    return load_transformer("longlive", files / "base.pt", lora=files / "lora.pt", lora_mode=mode, size="tiny",
                            dtype=dtype)


def peft_model(files, dtype: torch.dtype):
    """The base model wrapped by PEFT exactly as LongLive wraps it, adapters loaded, cast to ``dtype``."""
    base = load_transformer("longlive", files / "base.pt", size="tiny")  # fp32, no LoRA
    targets = [f"blocks.{i}.{t}" for i in range(TINY.num_layers) for t in LORA_TARGETS]
    wrapped = peft.get_peft_model(base, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                                         target_modules=targets))
    result = peft.set_peft_model_state_dict(wrapped, torch.load(files / "lora.pt")["generator_lora"])
    assert not result.unexpected_keys
    return wrapped.to(dtype).base_model.model.eval()  # the WanModel, its Linears now PEFT's


def latents(model, fused: bool = True) -> tuple[torch.Tensor, bool]:
    """CHUNKS chunks of the memrope_reference policy; whether the fused path ran."""
    cfg = model.config
    with torch.no_grad():
        text = model.encode_text(torch.randn(1, cfg.text_len, cfg.text_dim, generator=torch.Generator().manual_seed(3)))
    gen = StreamingGenerator(model, make_policy("memrope_reference"), text,
                             GenerationConfig(latent_hw=TINY_LATENT_HW, seed=2), fused=fused)
    return torch.cat([gen.next_chunk().latents for _ in range(CHUNKS)], dim=2), gen._fused is not None


def velocity(model, x: torch.Tensor, fused: bool) -> torch.Tensor:
    cfg = model.config
    cache = KVCache(make_policy("sliding_window"), model.cache_geometry(1, TINY_LATENT_HW, 3), model.rope)
    cache.begin_chunk(3)
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        return model(x.to(next(model.parameters()).dtype), torch.full((1,), 700.0), model.encode_text(ctx), cache,
                     fused=fused)


def test_unmerged_linear_is_peft_bit_for_bit_in_bf16(files):
    ours, reference = load(files, "unmerged", torch.bfloat16), peft_model(files, torch.bfloat16)
    x = torch.randn(2, 7, TINY.dim, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    for name in ("blocks.0.self_attn.q", "blocks.1.cross_attn.o", "blocks.1.ffn.2"):
        layer, theirs = ours.get_submodule(name), reference.get_submodule(name)
        assert isinstance(layer, LoraLinear) and type(theirs).__module__.startswith("peft")
        inp = x if name != "blocks.1.ffn.2" else torch.randn(2, 7, TINY.ffn_dim).to(torch.bfloat16)
        with torch.no_grad():
            assert torch.equal(layer(inp), theirs(inp))


def test_unmerged_video_is_peft_bit_for_bit_in_bf16(files):
    """Five chunks with the memrope_reference policy on the module path: every latent equal to PEFT's."""
    ours, _ = latents(load(files, "unmerged", torch.bfloat16), fused=False)
    theirs, ran_fused = latents(peft_model(files, torch.bfloat16))
    assert not ran_fused  # PEFT's modules are not the plain ones the fused path binds: module path
    assert torch.equal(ours, theirs)


def test_merged_equals_peft_in_fp32_but_not_in_bf16(files):
    x = torch.randn(1, TINY.in_dim, 3, *TINY_LATENT_HW, generator=torch.Generator().manual_seed(1))
    fp32 = velocity(peft_model(files, torch.float32), x, fused=False)
    torch.testing.assert_close(velocity(load(files, "merged", torch.float32), x, fused=False), fp32,
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(velocity(load(files, "unmerged", torch.float32), x, fused=False), fp32,
                               rtol=1e-5, atol=1e-5)
    peft_bf16 = velocity(peft_model(files, torch.bfloat16), x, fused=False)
    assert torch.equal(velocity(load(files, "unmerged", torch.bfloat16), x, fused=False), peft_bf16)
    merged_bf16 = velocity(load(files, "merged", torch.bfloat16), x, fused=False)
    assert not torch.equal(merged_bf16, peft_bf16)  # the merge rounds W + s B A once: other values
    assert (merged_bf16.float() - peft_bf16.float()).abs().mean() < 0.05 * peft_bf16.float().abs().mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_path_runs_unmerged_adapters(files, dtype):
    model = load(files, "unmerged", dtype)
    fused, ran_fused = latents(model)
    modules, _ = latents(model, fused=False)
    assert ran_fused
    if dtype == torch.float32:
        torch.testing.assert_close(fused, modules, rtol=1e-4, atol=1e-4)
    else:  # the fused path's norms round once where Wan's round twice (as without LoRA)
        assert (fused.float() - modules.float()).abs().mean() < 0.05
    base, _ = latents(load_transformer("longlive", files / "base.pt", size="tiny", dtype=dtype))
    assert (fused.float() - base.float()).abs().mean() > 0.1  # the adapters took effect on the fused path


def test_fused_path_falls_back_when_adapters_do_not_stack(files):
    """q, k and v run as one matmul: an adapter on q alone sends the model to the module path, which
    still computes it."""
    model = load_transformer("longlive", files / "base.pt", size="tiny")
    a, b = lora_pairs(TINY, RANK)["blocks.0.self_attn.q"]
    attach_lora(model, {"blocks.0.self_attn.q": {"A": a, "B": b}}, scale=2.0)
    with torch.no_grad():
        assert model.fused_params() is None
    x = torch.randn(1, TINY.in_dim, 3, *TINY_LATENT_HW, generator=torch.Generator().manual_seed(1))
    plain = load_transformer("longlive", files / "base.pt", size="tiny")
    assert not torch.allclose(velocity(model, x, fused=True), velocity(plain, x, fused=True), atol=1e-3)


def test_bad_lora_mode(files):
    with pytest.raises(ValueError, match=r"--lora-mode must be one of merged, unmerged, got 'fused'"):
        load(files, "fused", torch.float32)
    with pytest.raises(TypeError, match="blocks.0.norm3 is a WanLayerNorm, not a plain Linear"):
        attach_lora(random_wan(TINY), {"blocks.0.norm3": {"A": torch.zeros(1, 1), "B": torch.zeros(1, 1)}}, 1.0)


@pytest.mark.slow
def test_bf16_merge_difference_at_the_real_shapes():
    """The README's figure: merged vs unmerged (PEFT) in bf16 on Linears of Wan2.1-1.3B's shapes with the
    released LoRA's rank and alpha (256, 256), random weights (W ~ N(0, 1/in), the LoRA product a tenth
    of W in norm, activations ~ N(0, 1)); each against the exact (fp64) output. Prints the numbers."""
    gen = torch.Generator().manual_seed(0)
    rank, scale = 256, 1.0
    for out_f, in_f in ((1536, 1536), (8960, 1536), (1536, 8960)):
        w = torch.randn(out_f, in_f, generator=gen, dtype=torch.float64) / in_f**0.5
        a = torch.randn(rank, in_f, generator=gen, dtype=torch.float64) / in_f**0.5
        b = torch.randn(out_f, rank, generator=gen, dtype=torch.float64)
        b *= 0.1 * w.norm() / (b @ a).norm()
        bias = 0.01 * torch.randn(out_f, generator=gen, dtype=torch.float64)
        x = torch.randn(4096, in_f, generator=gen, dtype=torch.float64)
        w, a, b, bias = (t.float() for t in (w, a, b, bias))  # the files hold fp32 (say)
        exact = x @ (w.double() + scale * b.double() @ a.double()).T + bias.double()
        bf = lambda t: t.to(torch.bfloat16)  # noqa: E731
        base = torch.nn.Linear(in_f, out_f, dtype=torch.bfloat16)
        base.weight.data, base.bias.data = bf(w), bf(bias)
        merged_w = merge_lora({"m.weight": w}, {"m": {"A": a, "B": b}}, LoraScale(rank, rank * scale),
                              dtype=torch.bfloat16)["m.weight"]
        with torch.no_grad():
            unmerged = LoraLinear(base, bf(a), bf(b), scale)(bf(x)).double()
            merged = torch.nn.functional.linear(bf(x), merged_w, bf(bias)).double()
        rms = lambda t: t.pow(2).mean().sqrt().item()  # noqa: E731
        print(f"\nLinear {in_f}->{out_f}, rank {rank}: relative RMS, merged vs unmerged (PEFT) "
              f"{rms(merged - unmerged) / rms(exact):.2e}; merged vs exact {rms(merged - exact) / rms(exact):.2e}; "
              f"unmerged vs exact {rms(unmerged - exact) / rms(exact):.2e}; values that differ "
              f"{(merged != unmerged).double().mean().item():.1%}")
        assert 0 < rms(merged - unmerged) < 0.02 * rms(exact)
