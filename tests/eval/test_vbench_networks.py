"""VBench-exact network metrics with tiny random networks: formulas against hand-computed cosines,
local-only loading (HF folders, VBench cache layout, original files) and converter round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, ViTConfig, ViTModel

from memrope.eval.converters import (
    clip_vision_config,
    clip_visual_to_hf,
    dino_config,
    dino_to_hf,
    hf_to_clip_visual,
    hf_to_dino,
)
from memrope.eval.dino_positions import dino_interpolate, use_dino_interpolation
from memrope.eval.preprocess import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, clip_inputs, dino_inputs
from memrope.eval.vbench import (
    SUBJECT_ANCHOR,
    SUBJECT_CONSISTENCY,
    AestheticMetric,
    ConsistencyMetric,
    NetworkSuite,
    clip_encoder,
    consistency_terms,
    dino_encoder,
)
from memrope.eval.weights import (
    CLIP_VITB32,
    DINO_VITB16,
    LAION_AESTHETIC,
    WeightsMissing,
    load_aesthetic_head,
    load_clip_vision,
    load_dino,
    locate,
)

from .conftest import HEIGHT, WIDTH, texture

# 64-dim heads like DINO/CLIP, so the loaders' head-count inference (width / 64) holds for the tiny nets
WIDTH_TINY, HEADS = 128, 2


def tiny_vit(dino_positions: bool = True) -> ViTModel:
    """Tiny DINO-like ViT, by default with DINO's position-embedding resize (as load_dino returns it)."""
    torch.manual_seed(0)
    cfg = ViTConfig(
        hidden_size=WIDTH_TINY,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        layer_norm_eps=1e-6,
    )
    model = ViTModel(cfg, add_pooling_layer=False).eval()
    if dino_positions:
        use_dino_interpolation(model)
    return model


def tiny_clip(projection_dim: int = 16) -> CLIPVisionModelWithProjection:
    torch.manual_seed(1)
    # CLIP sees 224x224 crops (VBench's transform), so the tiny model keeps 224 with large 32-px patches
    cfg = CLIPVisionConfig(
        hidden_size=WIDTH_TINY,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        intermediate_size=64,
        image_size=224,
        patch_size=32,
        projection_dim=projection_dim,
    )
    return CLIPVisionModelWithProjection(cfg).eval()


def frames(n: int = 6) -> list[np.ndarray]:
    return [texture(HEIGHT, WIDTH, seed=s % 3) for s in range(n)]


def vbench_reference(features: torch.Tensor) -> float:
    """VBench's loop, literally: F.normalize, cosine_similarity with max(0, .), mean over t >= 1."""
    feats = torch.nn.functional.normalize(features, dim=-1, p=2)
    video_sim, cnt = 0.0, 0
    first = former = None
    for i in range(len(feats)):
        f = feats[i].unsqueeze(0)
        if i == 0:
            first = f
        else:
            sim_pre = max(0.0, torch.nn.functional.cosine_similarity(former, f).item())
            sim_fir = max(0.0, torch.nn.functional.cosine_similarity(first, f).item())
            video_sim += (sim_pre + sim_fir) / 2
            cnt += 1
        former = f
    return video_sim / cnt


def test_consistency_formula_against_hand_computed_cosines():
    f = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    # t=1: cos(f0,f1)=0.6 twice -> 0.6; t=2: cos(f1,f2)=0.8, cos(f0,f2)=0 -> 0.4;
    # t=3: cos(f2,f3)=0, cos(f0,f3)=-1 clipped to 0 -> 0
    terms = consistency_terms(f * 3.0)  # scale must not matter
    assert torch.allclose(terms, torch.tensor([0.6, 0.4, 0.0]))
    assert vbench_reference(f) == pytest.approx(float(terms.mean()))


def test_preprocessing_shapes_and_normalisation():
    grey = np.full((2, HEIGHT, WIDTH, 3), 128, np.uint8)
    d = dino_inputs(grey)
    assert d.shape == (2, 3, 224, int(224 * WIDTH / HEIGHT))  # short side 224, no crop
    assert torch.allclose(
        d[0, :, 5, 5], (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    )
    c = clip_inputs(grey)
    assert c.shape == (2, 3, 224, 224)
    assert torch.allclose(c[0, :, 5, 5], (128 / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD))
    # values pass through uint8 rounding like torchvision's resize of uint8 tensors
    raw = dino_inputs(frames(1)) * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(
        IMAGENET_MEAN
    ).view(1, 3, 1, 1)
    assert torch.allclose(raw * 255, (raw * 255).round(), atol=1e-3)
    with pytest.raises(ValueError):
        dino_inputs(np.zeros((1, 4, 4), np.uint8))


def test_subject_consistency_from_local_hf_folder_matches_reference(tmp_path):
    vit = tiny_vit()
    vit.save_pretrained(tmp_path / "dino-vitb16")
    suite = NetworkSuite(tmp_path, batch=4)
    assert "subject_consistency" not in suite.skipped
    assert "background_consistency" in suite.skipped and "aesthetic_quality" in suite.skipped
    digest = suite.provenance[DINO_VITB16.name]["sha256"]
    assert all(len(h) == 64 for h in digest.values())

    metric = suite.fresh_metrics()[0]
    clip = frames(6)
    for i, f in enumerate(clip):
        metric.add(0 if i < 3 else 1, f)  # two segments of three frames
    per_segment, whole = metric.finish(2)
    with torch.inference_mode():
        feats = vit(pixel_values=dino_inputs(clip), interpolate_pos_encoding=True).last_hidden_state[:, 0]
    expected = [vbench_reference(feats[:3]), vbench_reference(feats[3:])]
    assert per_segment["subject_consistency"] == pytest.approx(expected, abs=1e-5)
    assert whole["subject_consistency"] == pytest.approx(np.mean(expected), abs=1e-5)
    unit = torch.nn.functional.normalize(feats, dim=-1)
    anchor = torch.nn.functional.cosine_similarity(unit[3:].sum(0), unit[:3].sum(0), dim=0)
    assert per_segment["subject_anchor_similarity"] == pytest.approx([1.0, float(anchor)], abs=1e-5)


def test_background_and_aesthetic_match_hand_computation(tmp_path):
    b32 = tiny_clip()
    b32.save_pretrained(tmp_path / "clip-vit-base-patch32")
    l14 = tiny_clip(projection_dim=8)
    l14.save_pretrained(tmp_path / "clip-vit-large-patch14")
    head = nn.Linear(8, 1)
    (tmp_path / "aesthetic_model" / "emb_reader").mkdir(parents=True)
    torch.save(head.state_dict(), tmp_path / "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth")
    suite = NetworkSuite(tmp_path, batch=3)
    assert set(suite.skipped) == {"subject_consistency", "subject_anchor_similarity", "imaging_quality",
                                  "dynamic_degree", "motion_smoothness", "overall_consistency"}
    background, aesthetic = suite.fresh_metrics()
    clip = frames(4)
    for f in clip:
        background.add(0, f)
        aesthetic.add(0, f)
    bg, _ = background.finish(1)
    ae, ae_whole = aesthetic.finish(1)
    with torch.inference_mode():
        e = b32(pixel_values=clip_inputs(clip)).image_embeds
        expected_bg = vbench_reference(e)
        emb = torch.nn.functional.normalize(l14(pixel_values=clip_inputs(clip)).image_embeds, dim=-1)
        expected_ae = float((head(emb).squeeze(-1) / 10).mean())
    assert bg["background_consistency"][0] == pytest.approx(expected_bg, abs=1e-5)
    assert ae["aesthetic_quality"][0] == pytest.approx(expected_ae, abs=1e-6)
    assert ae_whole["aesthetic_quality"] == pytest.approx(expected_ae, abs=1e-6)


def test_missing_weights_are_skipped_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    suite = NetworkSuite(tmp_path / "empty")
    assert suite.fresh_metrics() == []
    assert set(suite.skipped) == {
        "subject_consistency",
        "subject_anchor_similarity",
        "background_consistency",
        "background_anchor_similarity",
        "aesthetic_quality",
        "imaging_quality",
        "dynamic_degree",
        "motion_smoothness",
        "overall_consistency",
    }
    assert "does not exist" in suite.skipped["subject_consistency"]
    (tmp_path / "w").mkdir()
    with pytest.raises(WeightsMissing, match="dino_vitbase16_pretrain.pth"):
        locate(tmp_path / "w", DINO_VITB16)
    assert NetworkSuite(None).skipped["aesthetic_quality"].endswith("no --weights-dir given")


def test_dino_converter_round_trips_in_the_original_layout(tmp_path):
    vit = tiny_vit()
    original = hf_to_dino(vit.state_dict())
    # the real facebookresearch/dino key layout
    assert {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "blocks.1.attn.qkv.weight",
        "blocks.0.attn.proj.bias",
        "blocks.0.norm1.weight",
        "blocks.0.mlp.fc2.weight",
        "norm.bias",
    } <= set(original)
    assert original["blocks.0.attn.qkv.weight"].shape == (3 * WIDTH_TINY, WIDTH_TINY)
    back = dino_to_hf(original)
    assert set(back) == set(vit.state_dict())
    assert all(torch.equal(back[k], v) for k, v in vit.state_dict().items())
    # a DINO training checkpoint (teacher, module./backbone. prefixes, projection head) also loads
    wrapped = {
        "teacher": {f"module.backbone.{k}": v for k, v in original.items()}
        | {"module.head.mlp.0.weight": torch.zeros(2, 2)}
    }
    assert set(dino_to_hf(wrapped)) == set(back)
    cfg = dino_config(original)
    assert (
        cfg.hidden_size,
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.patch_size,
        cfg.image_size,
    ) == (WIDTH_TINY, 2, HEADS, 8, 32)
    # saved in the VBench cache layout, loaded through the converter, same features
    (tmp_path / "dino_model").mkdir()
    torch.save(original, tmp_path / "dino_model" / "dino_vitbase16_pretrain.pth")
    located = locate(tmp_path, DINO_VITB16)
    assert located.kind == "original"
    converted = load_dino(located)
    with torch.inference_mode():
        a = dino_encoder(vit)(frames(2))
        b = dino_encoder(converted)(frames(2))
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="unexpected keys"):
        dino_to_hf({**original, "blocks.0.attn.extra": torch.zeros(1)})


def _as_openai_jit_archive(sd: dict[str, torch.Tensor], path) -> None:
    """Save tensors under their dotted names in a TorchScript archive, as OpenAI's ViT-*.pt files are."""
    root = nn.Module()
    for key, t in sd.items():
        *parents, leaf = key.split(".")
        m = root
        for p in parents:
            if not hasattr(m, p):
                m.add_module(p, nn.Module())
            m = getattr(m, p)
        m.register_parameter(leaf, nn.Parameter(t.clone(), requires_grad=False))
    torch.jit.script(root).save(str(path))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_clip_converter_round_trips_and_loads_an_openai_archive(tmp_path):
    model = tiny_clip()
    original = hf_to_clip_visual(model.state_dict())
    assert {
        "visual.class_embedding",
        "visual.conv1.weight",
        "visual.positional_embedding",
        "visual.ln_pre.weight",
        "visual.transformer.resblocks.1.attn.in_proj_weight",
        "visual.transformer.resblocks.0.mlp.c_fc.bias",
        "visual.ln_post.bias",
        "visual.proj",
    } <= set(original)
    assert original["visual.proj"].shape == (WIDTH_TINY, 16)  # [width, embed]: x @ proj
    full = {
        **original,
        "token_embedding.weight": torch.zeros(4, 8),
        "logit_scale": torch.tensor(1.0),
        "transformer.resblocks.0.attn.in_proj_weight": torch.zeros(24, 8),
    }  # text tower is ignored
    back = clip_visual_to_hf(full)
    assert set(back) == set(model.state_dict())
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    cfg = clip_vision_config(original)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.projection_dim, cfg.image_size, cfg.hidden_act) == (
        WIDTH_TINY,
        HEADS,
        16,
        224,
        "quick_gelu",
    )

    (tmp_path / "clip_model").mkdir()
    _as_openai_jit_archive(full, tmp_path / "clip_model" / "ViT-B-32.pt")
    located = locate(tmp_path, CLIP_VITB32)
    assert located.kind == "original"
    loaded = load_clip_vision(located)
    with torch.inference_mode():
        assert torch.allclose(clip_encoder(model)(frames(2)), clip_encoder(loaded)(frames(2)), atol=1e-5)


def test_aesthetic_head_checkpoint_round_trip(tmp_path):
    head = nn.Linear(8, 1)
    torch.save(head.state_dict(), tmp_path / "sa_0_4_vit_l_14_linear.pth")
    loaded = load_aesthetic_head(locate(tmp_path, LAION_AESTHETIC))
    assert torch.equal(loaded.weight, head.weight) and torch.equal(loaded.bias, head.bias)
    torch.save({"weight": torch.zeros(1, 8)}, tmp_path / "sa_0_4_vit_l_14_linear.pth")
    with pytest.raises(ValueError, match="weight/bias"):
        load_aesthetic_head(locate(tmp_path, LAION_AESTHETIC))


def test_consistency_metric_streams_across_batches():
    """Batch boundaries must not change the result (state carried across flushes)."""
    vit = tiny_vit()
    clip = frames(7)
    results = []
    for batch in (1, 3, 16):
        m = ConsistencyMetric(SUBJECT_CONSISTENCY, SUBJECT_ANCHOR, dino_encoder(vit), batch)
        for f in clip:
            m.add(0, f)
        results.append(m.finish(1)[0]["subject_consistency"][0])
    assert results[0] == pytest.approx(results[1], abs=1e-6) == pytest.approx(results[2], abs=1e-6)
    assert not math.isnan(results[0])


def test_aesthetic_metric_rejects_nothing_and_handles_empty_segments():
    m = AestheticMetric(tiny_clip(projection_dim=8), nn.Linear(8, 1), batch=2)
    per_segment, whole = m.finish(2)
    assert np.isnan(per_segment["aesthetic_quality"]).all() and math.isnan(whole["aesthetic_quality"])


def _dino_reference_interpolation(pos_embed: torch.Tensor, x_tokens: int, w: int, h: int, patch: int):
    """facebookresearch/dino vision_transformer.py interpolate_pos_encoding, transcribed
    (note: DINO calls the height `w` and the width `h`: `B, nc, w, h = x.shape`)."""
    npatch = x_tokens - 1
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0 = w // patch
    h0 = h // patch
    w0, h0 = w0 + 0.1, h0 + 0.1
    patch_pos_embed = torch.nn.functional.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
        mode="bicubic",
    )
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def test_position_embeddings_are_resized_exactly_as_dino_does():
    torch.manual_seed(3)
    pos = torch.randn(1, 1 + 14 * 14, 8)  # ViT-B/16 at 224: a 14 x 14 grid
    height, width = 224, int(224 * 832 / 480)  # VBench's DINO input for an 832x480 video
    tokens = 1 + (height // 16) * (width // 16)
    ours = dino_interpolate(pos, height, width, 16)
    assert torch.equal(ours, _dino_reference_interpolation(pos, tokens, height, width, 16))
    assert torch.equal(dino_interpolate(pos, 224, 224, 16), pos)  # square, same grid: untouched
    # transformers' default (size=...) samples differently: this is why the DINO version is bound
    plain = tiny_vit(dino_positions=False)
    hf = plain.embeddings.interpolate_pos_encoding(torch.zeros(1, 1 + 28 * 49, WIDTH_TINY), 224, 392)
    dino = dino_interpolate(plain.embeddings.position_embeddings, 224, 392, 8)
    assert hf.shape == dino.shape and not torch.allclose(hf, dino, atol=1e-4)


def test_hf_dino_folder_gets_dino_layer_norm_eps(tmp_path):
    vit = tiny_vit(dino_positions=False)
    vit.config.layer_norm_eps = 1e-12  # what a converted hub folder may carry
    vit.save_pretrained(tmp_path / "dino-vitb16")
    loaded = load_dino(locate(tmp_path, DINO_VITB16))
    assert loaded.config.layer_norm_eps == 1e-6 and loaded.layernorm.eps == 1e-6


def test_skip_list_names_match_the_network_specs():
    from memrope.eval.evaluate import NETWORK_METRIC_NAMES
    from memrope.eval.vbench import NETWORK_SPECS

    assert tuple(s.name for s in NETWORK_SPECS) == NETWORK_METRIC_NAMES
