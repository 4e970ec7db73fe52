"""Transformer checkpoints: every real layout loads exactly, LoRA merges exactly, bad files fail loudly."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

from memrope.cache import KVCache, make_policy
from memrope.models.checkpoints import load_transformer
from memrope.models.formats.diffusers import diffusers_key, original_key
from memrope.models.formats.lora import LORA_TARGETS
from memrope.models.wan_config import wan_config
from memrope.models.wan_layout import expected_shapes, read_dit_config
from memrope.models.weight_files import WeightFileError
from tests.models.tiny_wan_files import (
    LORA_NAMINGS,
    TINY_REAL,
    diffusers_transformer,
    lora_pairs,
    lora_state,
    original_dit_config,
    original_state,
    random_wan,
    self_forcing_dict,
)

TINY = wan_config("tiny")
RANK = 4
LATENT_HW = (4, 4)


@pytest.fixture(scope="module")
def models():
    """Three distinct tiny generators: EMA, raw and critic weights must never be confused."""
    return {name: random_wan(TINY, seed) for seed, name in enumerate(("ema", "gen", "critic"))}


@pytest.fixture(scope="module")
def files(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    torch.save(
        self_forcing_dict(models["ema"], models["gen"], models["critic"]), root / "self_forcing_dmd.pt"
    )
    torch.save(
        self_forcing_dict(models["ema"], models["gen"], models["critic"], fsdp=True), root / "sf_fsdp.pt"
    )
    base = {
        "generator": {f"model.{k}": v for k, v in original_state(models["gen"]).items()},
        "critic": {f"model.{k}": v for k, v in original_state(models["critic"]).items()},
        "step": 1000,
    }
    torch.save(base, root / "longlive_base.pt")
    torch.save(original_state(models["gen"]), root / "bare_base.pt")
    pairs = lora_pairs(TINY, RANK)
    for naming in LORA_NAMINGS:
        torch.save(
            {"generator_lora": lora_state(pairs, naming), "critic_lora": {}, "step": 1000},
            root / f"lora_{naming}.pt",
        )
    torch.save(lora_state(pairs), root / "lora_bare.pt")
    return root


def _assert_equal_state(model, expected: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v.to(got[k].dtype)), k


def velocity(model, seed: int = 0, frames: int = 2) -> torch.Tensor:
    """One chunk through the model with an empty full-attention cache (bidirectional within the chunk)."""
    cfg = model.config
    cache = KVCache(make_policy("full"), model.cache_geometry(1, LATENT_HW, frames), model.rope)
    cache.begin_chunk(frames)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, cfg.in_dim, frames, *LATENT_HW, generator=g)
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([700.0]), model.encode_text(ctx), cache)


# --- key layouts ---------------------------------------------------------------------------------------


def test_diffusers_renames_follow_the_reference_table():
    # Written from huggingface/diffusers@7d56827 scripts/convert_wan_to_diffusers.py, independently of our tables.
    table = {
        "time_embedding.0.weight": "condition_embedder.time_embedder.linear_1.weight",
        "time_embedding.2.bias": "condition_embedder.time_embedder.linear_2.bias",
        "time_projection.1.weight": "condition_embedder.time_proj.weight",
        "text_embedding.0.weight": "condition_embedder.text_embedder.linear_1.weight",
        "text_embedding.2.bias": "condition_embedder.text_embedder.linear_2.bias",
        "blocks.3.self_attn.q.weight": "blocks.3.attn1.to_q.weight",
        "blocks.3.self_attn.o.bias": "blocks.3.attn1.to_out.0.bias",
        "blocks.3.self_attn.norm_k.weight": "blocks.3.attn1.norm_k.weight",
        "blocks.3.cross_attn.v.weight": "blocks.3.attn2.to_v.weight",
        "blocks.3.cross_attn.norm_q.weight": "blocks.3.attn2.norm_q.weight",
        "blocks.3.norm3.weight": "blocks.3.norm2.weight",
        "blocks.3.ffn.0.weight": "blocks.3.ffn.net.0.proj.weight",
        "blocks.3.ffn.2.bias": "blocks.3.ffn.net.2.bias",
        "blocks.3.modulation": "blocks.3.scale_shift_table",
        "head.head.weight": "proj_out.weight",
        "head.modulation": "scale_shift_table",
        "patch_embedding.weight": "patch_embedding.weight",
    }
    for original, diffusers in table.items():
        assert diffusers_key(original) == diffusers
        assert original_key(diffusers) == original


def test_renames_are_a_bijection_on_the_real_size():
    keys = list(expected_shapes(wan_config("wan-1.3b")))
    renamed = [diffusers_key(k) for k in keys]
    assert len(set(renamed)) == len(keys)
    assert [original_key(k) for k in renamed] == keys


def test_renames_match_diffusers_own_model_at_the_real_size():
    """diffusers' WanTransformer3DModel with the Wan2.1-T2V-1.3B config, built on meta (nothing allocated)."""
    real = wan_config("wan-1.3b")
    with torch.device("meta"):
        dif = WanTransformer3DModel(
            patch_size=real.patch,
            num_attention_heads=real.num_heads,
            attention_head_dim=real.head_dim,
            in_channels=real.in_dim,
            out_channels=real.out_dim,
            text_dim=real.text_dim,
            freq_dim=real.freq_dim,
            ffn_dim=real.ffn_dim,
            num_layers=real.num_layers,
            cross_attn_norm=True,
            eps=real.eps,
        )
    expected = {diffusers_key(k): tuple(s) for k, s in expected_shapes(real).items()}
    assert expected == {k: tuple(v.shape) for k, v in dif.state_dict().items()}


def test_renames_match_diffusers_own_model():
    dif = diffusers_transformer(TINY_REAL)
    expected = {diffusers_key(k): tuple(s) for k, s in expected_shapes(TINY_REAL).items()}
    assert expected == {k: tuple(v.shape) for k, v in dif.state_dict().items()}


# --- Self-Forcing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["self_forcing_dmd.pt", "sf_fsdp.pt"])
def test_self_forcing_loads_the_ema_generator_by_default(files, models, name):
    model = load_transformer("self-forcing", files / name, size="tiny")
    _assert_equal_state(model, original_state(models["ema"]))
    assert model.config == TINY
    assert not any(p.requires_grad for p in model.parameters())


def test_self_forcing_no_ema_loads_generator(files, models):
    model = load_transformer("self-forcing", files / "self_forcing_dmd.pt", use_ema=False, size="tiny")
    _assert_equal_state(model, original_state(models["gen"]))


def test_size_is_inferred_from_shapes_and_dtype_applied(files, models):
    model = load_transformer("self-forcing", files / "sf_fsdp.pt", size=None, dtype=torch.bfloat16)
    assert model.config == TINY
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.rope.cos_t.dtype == torch.float32 and model.rope.cos_t.device.type == "cpu"
    _assert_equal_state(model, original_state(models["ema"]))


def test_loaded_model_runs_like_the_source(files, models):
    model = load_transformer("self-forcing", files / "self_forcing_dmd.pt", size=None)
    assert torch.equal(velocity(model), velocity(models["ema"]))


# --- LongLive base + PEFT LoRA ---------------------------------------------------------------------------


def _merged_expected(models, scale: float) -> dict[str, torch.Tensor]:
    state = original_state(models["gen"])
    for module, (a, b) in lora_pairs(TINY, RANK).items():
        state[f"{module}.weight"] = state[f"{module}.weight"] + scale * (b @ a)
    return state


@pytest.mark.parametrize("naming", list(LORA_NAMINGS))
def test_longlive_lora_key_namings_merge_exactly(files, models, naming):
    model = load_transformer(
        "longlive", files / "longlive_base.pt", lora=files / f"lora_{naming}.pt", size=None
    )
    expected = _merged_expected(models, scale=1.0)  # no alpha in the file: LongLive's alpha = rank
    got = model.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6, msg=k)


def test_bare_base_and_bare_lora_with_alpha_flag(files, models):
    model = load_transformer(
        "longlive", files / "bare_base.pt", lora=files / "lora_bare.pt", lora_alpha=8.0, size="tiny"
    )
    expected = _merged_expected(models, scale=8.0 / RANK)
    for k, v in expected.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=1e-6, msg=k)


def test_merged_lora_equals_unmerged_lora_forward(files, models):
    """Merged weights vs the base model with (alpha/r) B A x added on each Linear by forward hooks."""
    alpha = 2.0 * RANK
    merged = load_transformer(
        "longlive", files / "longlive_base.pt", lora=files / "lora_peft.pt", lora_alpha=alpha, size=None
    )
    base = random_wan(TINY, 1)  # == models["gen"]
    handles = []
    for module, (a, b) in lora_pairs(TINY, RANK).items():

        def hook(_mod, inputs, output, a=a, b=b):
            return output + (alpha / RANK) * F.linear(F.linear(inputs[0], a), b)

        handles.append(base.get_submodule(module).register_forward_hook(hook))
    try:
        unmerged = velocity(base)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(velocity(merged), unmerged, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(velocity(models["gen"]), unmerged, atol=1e-3)  # the LoRA does change the output


def test_alpha_and_rank_carried_by_the_file(files, models, tmp_path):
    pairs = lora_pairs(TINY, RANK)
    torch.save({"generator_lora": lora_state(pairs), "lora_alpha": 2.0, "r": RANK}, tmp_path / "lora.pt")
    model = load_transformer("longlive", files / "longlive_base.pt", lora=tmp_path / "lora.pt", size=None)
    for k, v in _merged_expected(models, scale=2.0 / RANK).items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=1e-6, msg=k)
    with pytest.raises(WeightFileError, match="carries lora_alpha 2 but --lora-alpha 3"):
        load_transformer(
            "longlive", files / "longlive_base.pt", lora=tmp_path / "lora.pt", lora_alpha=3.0, size=None
        )


def test_peft_adapter_folder(files, models, tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    save_file(lora_state(lora_pairs(TINY, RANK), "peft"), folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(
        json.dumps({"r": RANK, "lora_alpha": 16, "peft_type": "LORA"})
    )
    model = load_transformer("longlive", files / "longlive_base.pt", lora=folder, size=None)
    for k, v in _merged_expected(models, scale=16 / RANK).items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=1e-6, msg=k)


def test_rslora_adapter_folder_scales_by_alpha_over_the_root_of_the_rank(files, models, tmp_path):
    """PEFT's ``use_rslora``: B A scaled by alpha / sqrt(r) (Kalajdzievski 2023), not alpha / r; with
    r = 4 the two differ by a factor of 2, so merging either way shows in every adapted weight."""
    folder = tmp_path / "adapter"
    folder.mkdir()
    save_file(lora_state(lora_pairs(TINY, RANK), "peft"), folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(
        json.dumps({"r": RANK, "lora_alpha": 16, "peft_type": "LORA", "use_rslora": True})
    )
    model = load_transformer("longlive", files / "longlive_base.pt", lora=folder, size=None)
    for k, v in _merged_expected(models, scale=16 / RANK ** 0.5).items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=1e-6, msg=k)


def test_lora_rank_flag_must_match_the_tensors(files):
    with pytest.raises(
        WeightFileError, match=f"--lora-rank says rank 256 but the LoRA tensors have rank {RANK}"
    ):
        load_transformer(
            "longlive", files / "longlive_base.pt", lora=files / "lora_peft.pt", lora_rank=256, size="tiny"
        )


def test_lora_only_for_longlive(files):
    with pytest.raises(ValueError, match="LongLive checkpoints only"):
        load_transformer(
            "self-forcing", files / "self_forcing_dmd.pt", lora=files / "lora_peft.pt", size=None
        )


# --- diffusers transformer -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diffusers_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusers")
    dif = diffusers_transformer(TINY_REAL, seed=3)
    dif.save_pretrained(root / "folder", safe_serialization=True)
    dif.save_pretrained(root / "sharded", safe_serialization=True, max_shard_size="20KB")
    save_file({k: v.contiguous() for k, v in dif.state_dict().items()}, root / "single.safetensors")
    return root, dif


def test_diffusers_folder_sharded_and_single_file(diffusers_files, tmp_path):
    root, dif = diffusers_files
    assert (root / "sharded" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    source = dif.state_dict()
    fallback = read_dit_config(root / "folder" / "config.json")
    for path in (root / "folder", root / "sharded", root / "single.safetensors"):
        model = load_transformer("diffusers", path, size=None, config_fallback=fallback)
        assert model.config.dim == TINY_REAL.dim and model.config.num_heads == TINY_REAL.num_heads
        for k, v in model.state_dict().items():
            assert torch.equal(v, source[diffusers_key(k)]), (path, k)


def test_diffusers_weights_compute_what_diffusers_computes(diffusers_files):
    """Our causal model on one chunk with an empty cache == diffusers' bidirectional forward on it."""
    root, dif = diffusers_files
    model = load_transformer("diffusers", root / "folder", size=None)
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_dim, 2, *LATENT_HW, generator=g)
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
    cache = KVCache(make_policy("full"), model.cache_geometry(1, LATENT_HW, 2), model.rope)
    cache.begin_chunk(2)
    with torch.no_grad():
        ours = model(x, torch.tensor([700.0]), model.encode_text(ctx), cache)
        theirs = dif(
            hidden_states=x, timestep=torch.tensor([700.0]), encoder_hidden_states=ctx, return_dict=False
        )[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_single_diffusers_file_of_unknown_size_needs_a_config(diffusers_files):
    root, _ = diffusers_files
    with pytest.raises(WeightFileError, match="wrong model size .*matches none of"):
        load_transformer("diffusers", root / "single.safetensors", size=None)


def test_original_dit_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(original_dit_config(TINY_REAL)))
    assert read_dit_config(tmp_path / "config.json") == TINY_REAL


# --- bad files -------------------------------------------------------------------------------------------


def _rewrite(files, tmp_path, edit) -> object:
    ckpt = torch.load(files / "self_forcing_dmd.pt", weights_only=True)
    edit(ckpt["generator_ema"])
    path = tmp_path / "edited.pt"
    torch.save(ckpt, path)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(WeightFileError, match=r"nope\.pt: no such file \(expected a Self-Forcing checkpoint"):
        load_transformer("self-forcing", tmp_path / "nope.pt")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(WeightFileError, match=r"junk\.pt: not a loadable PyTorch checkpoint .*Self-Forcing"):
        load_transformer("self-forcing", tmp_path / "junk.pt")


def test_truncated_checkpoint(files, tmp_path):
    data = (files / "self_forcing_dmd.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightFileError, match=r"cut\.pt: not a loadable PyTorch checkpoint"):
        load_transformer("self-forcing", tmp_path / "cut.pt")


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_with_code_is_refused(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"generator_ema": _Payload()}, f)
    with pytest.raises(WeightFileError, match="weights_only=True"):
        load_transformer("self-forcing", tmp_path / "evil.pt")


def test_foreign_file_names_the_format_and_first_keys(tmp_path):
    torch.save({"encoder.conv1.weight": torch.zeros(8, 3, 3, 3, 3)}, tmp_path / "Wan2.1_VAE.pth")
    with pytest.raises(WeightFileError) as err:
        load_transformer("self-forcing", tmp_path / "Wan2.1_VAE.pth", size="tiny")
    msg = str(err.value)
    assert "Wan2.1_VAE.pth" in msg and "Self-Forcing checkpoint" in msg
    assert "missing" in msg and "blocks.0.cross_attn.k.bias" in msg
    assert "unexpected 1 keys: encoder.conv1.weight" in msg
    with pytest.raises(
        WeightFileError, match=r"Wan2\.1_VAE\.pth: does not match .*of size wan-1\.3b; missing"
    ):
        load_transformer("self-forcing", tmp_path / "Wan2.1_VAE.pth", size=None)


def test_missing_ema_suggests_no_ema(files, tmp_path):
    ckpt = torch.load(files / "self_forcing_dmd.pt", weights_only=True)
    del ckpt["generator_ema"]
    torch.save(ckpt, tmp_path / "no_ema.pt")
    with pytest.raises(WeightFileError, match="no 'generator_ema' entry .*pass --no-ema"):
        load_transformer("self-forcing", tmp_path / "no_ema.pt")


def test_missing_and_unexpected_keys(files, tmp_path):
    def edit(sd):
        del sd["model.blocks.1.ffn.2.bias"]
        sd["model.blocks.1.ffn.3.bias"] = torch.zeros(3)

    path = _rewrite(files, tmp_path, edit)
    with pytest.raises(
        WeightFileError,
        match=r"edited\.pt: does not match .*missing 1 keys: blocks\.1\.ffn\.2\.bias; "
        r"unexpected 1 keys: blocks\.1\.ffn\.3\.bias",
    ):
        load_transformer("self-forcing", path, size="tiny")


def test_wrong_shape(files, tmp_path):
    path = _rewrite(
        files, tmp_path, lambda sd: sd.update({"model.blocks.0.self_attn.q.bias": torch.zeros(7)})
    )
    with pytest.raises(
        WeightFileError, match=r"1 tensors have the wrong shape .*blocks\.0\.self_attn\.q\.bias \(7,\)"
    ):
        load_transformer("self-forcing", path, size="tiny")


def test_wrong_model_size_names_expected_and_found_shapes(files):
    with pytest.raises(WeightFileError) as err:
        load_transformer("self-forcing", files / "self_forcing_dmd.pt")  # default size wan-1.3b
    msg = str(err.value)
    assert "self_forcing_dmd.pt: wrong model size" in msg and "of size wan-1.3b" in msg
    assert "patch_embedding.weight (48, 4, 1, 2, 2) != (1536, 16, 1, 2, 2)" in msg


def test_nan_weights(files, tmp_path):
    def edit(sd):
        sd["model.head.head.weight"][0, 0] = float("nan")
        sd["model.blocks.0.modulation"][0, 0, 0] = float("inf")

    path = _rewrite(files, tmp_path, edit)
    with pytest.raises(
        WeightFileError, match=r"2 tensors hold NaN or inf: blocks\.0\.modulation, head\.head\.weight"
    ):
        load_transformer("self-forcing", path, size="tiny")


def test_lora_errors(files, tmp_path):
    pairs = lora_pairs(TINY, RANK)
    base = files / "longlive_base.pt"
    cases = {
        "missing": (
            {k: v for k, v in lora_state(pairs).items() if "blocks.1.ffn.2" not in k},
            r"no LoRA for 1 Linears: blocks\.1\.ffn\.2",
        ),
        "half": (
            {k: v for k, v in lora_state(pairs).items() if "blocks.0.self_attn.q.lora_B" not in k},
            r"only one of lora_A / lora_B for blocks\.0\.self_attn\.q",
        ),
        "foreign": (
            {
                **lora_state(pairs),
                "base_model.model.blocks.0.self_attn.q.lora_magnitude_vector": torch.ones(3),
            },
            r"1 keys are not LoRA A/B weights .*lora_magnitude_vector",
        ),
        "shape": (
            {**lora_state(pairs), "base_model.model.blocks.0.ffn.0.lora_A.weight": torch.zeros(RANK, 5)},
            r"1 LoRA pairs do not fit the model .*blocks\.0\.ffn\.0 A \(4, 5\)",
        ),
        "nan": (
            {
                **lora_state(pairs),
                "base_model.model.blocks.0.ffn.0.lora_B.weight": torch.full((96, RANK), torch.nan),
            },
            r"1 tensors hold NaN or inf: base_model\.model\.blocks\.0\.ffn\.0\.lora_B\.weight",
        ),
        "deeper": (
            {**lora_state(pairs), **lora_state({"blocks.5.ffn.0": pairs["blocks.0.ffn.0"]})},
            r"LoRA for modules this model lacks: blocks\.5\.ffn\.0",
        ),
    }
    for name, (state, pattern) in cases.items():
        path = tmp_path / f"lora_{name}.pt"
        torch.save({"generator_lora": state}, path)
        with pytest.raises(WeightFileError, match=pattern) as err:
            load_transformer("longlive", base, lora=path, size="tiny")
        assert f"lora_{name}.pt" in str(err.value), name


def test_lora_targets_are_every_block_linear():
    block = random_wan(TINY).blocks[0]
    linears = {n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears == set(LORA_TARGETS)


def test_non_dict_contents(tmp_path):
    torch.save(torch.zeros(3, 3), tmp_path / "tensor.pt")
    with pytest.raises(
        WeightFileError, match=r"tensor\.pt: holds a Tensor, not a dict; expected a Self-Forcing"
    ):
        load_transformer("self-forcing", tmp_path / "tensor.pt")
    torch.save({"generator_ema": torch.zeros(2)}, tmp_path / "flat.pt")
    with pytest.raises(
        WeightFileError, match=r"flat\.pt\['generator_ema'\]: holds a Tensor, not a state dict"
    ):
        load_transformer("self-forcing", tmp_path / "flat.pt")


def test_integer_weights(files, tmp_path):
    path = _rewrite(
        files, tmp_path, lambda sd: sd.update({"model.head.head.bias": torch.zeros(16, dtype=torch.int64)})
    )
    with pytest.raises(WeightFileError, match=r"edited\.pt: non-floating-point tensors head\.head\.bias"):
        load_transformer("self-forcing", path, size="tiny")
