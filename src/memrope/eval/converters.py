"""Key-layout converters: original DINO / OpenAI CLIP checkpoints <-> transformers modules.

VBench loads DINO through torch.hub (facebookresearch/dino, file dino_vitbase16_pretrain.pth) and CLIP
through the `clip` package (OpenAI's ViT-B-32.pt / ViT-L-14.pt). Users often have exactly those files
in a VBench cache; these converters let transformers' ViTModel and CLIPVisionModelWithProjection run
them. Each direction is a pure function on state dicts, and the config is inferred from tensor shapes
(head count is not in the shapes: both families use 64-dim heads, so heads = width / 64 by default).
Conversions are checked loudly: an unknown or missing key is an error, never silently dropped.
"""

from __future__ import annotations

import re

import torch
from transformers import CLIPVisionConfig, ViTConfig

# Both DINO ViTs and OpenAI CLIP ViTs use 64-dimensional attention heads.
HEAD_DIM = 64
# facebookresearch/dino builds its ViT with partial(nn.LayerNorm, eps=1e-6).
DINO_LAYER_NORM_EPS = 1e-6
# OpenAI CLIP uses torch's default LayerNorm eps and QuickGELU.
CLIP_LAYER_NORM_EPS = 1e-5
CLIP_ACTIVATION = "quick_gelu"

StateDict = dict[str, torch.Tensor]

# (original pattern, transformers pattern) for one-to-one renames; {i} is the block index.
_DINO_RENAMES = [
    ("cls_token", "embeddings.cls_token"),
    ("pos_embed", "embeddings.position_embeddings"),
    ("patch_embed.proj.weight", "embeddings.patch_embeddings.projection.weight"),
    ("patch_embed.proj.bias", "embeddings.patch_embeddings.projection.bias"),
    ("blocks.{i}.norm1.{p}", "layers.{i}.layernorm_before.{p}"),
    ("blocks.{i}.norm2.{p}", "layers.{i}.layernorm_after.{p}"),
    ("blocks.{i}.attn.proj.{p}", "layers.{i}.attention.o_proj.{p}"),
    ("blocks.{i}.mlp.fc1.{p}", "layers.{i}.mlp.fc1.{p}"),
    ("blocks.{i}.mlp.fc2.{p}", "layers.{i}.mlp.fc2.{p}"),
    ("norm.{p}", "layernorm.{p}"),
]
_CLIP_RENAMES = [
    ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
    ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    ("visual.ln_pre.{p}", "vision_model.pre_layrnorm.{p}"),
    ("visual.transformer.resblocks.{i}.ln_1.{p}", "vision_model.encoder.layers.{i}.layer_norm1.{p}"),
    ("visual.transformer.resblocks.{i}.ln_2.{p}", "vision_model.encoder.layers.{i}.layer_norm2.{p}"),
    (
        "visual.transformer.resblocks.{i}.attn.out_proj.{p}",
        "vision_model.encoder.layers.{i}.self_attn.out_proj.{p}",
    ),
    ("visual.transformer.resblocks.{i}.mlp.c_fc.{p}", "vision_model.encoder.layers.{i}.mlp.fc1.{p}"),
    ("visual.transformer.resblocks.{i}.mlp.c_proj.{p}", "vision_model.encoder.layers.{i}.mlp.fc2.{p}"),
    ("visual.ln_post.{p}", "vision_model.post_layernorm.{p}"),
]
_DINO_QKV = ("blocks.{i}.attn.qkv.{p}", "layers.{i}.attention.{n}_proj.{p}")
_CLIP_QKV = (
    "visual.transformer.resblocks.{i}.attn.in_proj_{p}",
    "vision_model.encoder.layers.{i}.self_attn.{n}_proj.{p}",
)
_CLIP_PROJ = ("visual.proj", "visual_projection.weight")


def _regex(pattern: str) -> re.Pattern:
    escaped = re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(escaped.replace(r"\{n\}", r"(?P<n>q|k|v)") + "$")


def _fill(pattern: str, match: re.Match) -> str:
    return pattern.format(**match.groupdict())


def _rename(sd: StateDict, renames: list[tuple[str, str]], reverse: bool) -> tuple[StateDict, StateDict]:
    """Apply one-to-one renames; return (renamed, leftover) so the caller handles the rest explicitly."""
    pairs = [(_regex(b), a) if reverse else (_regex(a), b) for a, b in renames]
    out, rest = {}, {}
    for key, value in sd.items():
        for rx, target in pairs:
            m = rx.match(key)
            if m:
                out[_fill(target, m)] = value
                break
        else:
            rest[key] = value
    return out, rest


def _split_qkv(rest: StateDict, qkv: tuple[str, str], out: StateDict) -> StateDict:
    rx = _regex(qkv[0])
    left = {}
    for key, value in rest.items():
        m = rx.match(key)
        if not m:
            left[key] = value
            continue
        for name, chunk in zip("qkv", value.chunk(3, dim=0), strict=True):
            out[qkv[1].format(i=m["i"], n=name, p=m["p"])] = chunk.clone()
    return left


def _merge_qkv(rest: StateDict, qkv: tuple[str, str], out: StateDict) -> StateDict:
    rx = _regex(qkv[1])
    groups: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    left = {}
    for key, value in rest.items():
        m = rx.match(key)
        if m:
            groups.setdefault((m["i"], m["p"]), {})[m["n"]] = value
        else:
            left[key] = value
    for (i, p), parts in groups.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"block {i} {p}: q/k/v projections incomplete ({sorted(parts)})")
        out[qkv[0].format(i=i, p=p)] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return left


def _fail_on_leftovers(left: StateDict, what: str) -> None:
    if left:
        raise ValueError(f"{what}: unexpected keys {sorted(left)[:8]} (not a checkpoint of this layout?)")


def unwrap_dino_checkpoint(sd: dict) -> StateDict:
    """Accept a bare backbone state dict or a DINO training checkpoint (teacher, module./backbone. prefixes);
    drop the projection head, which the features do not use."""
    if "teacher" in sd and isinstance(sd["teacher"], dict):
        sd = sd["teacher"]
    out = {}
    for key, value in sd.items():
        key = key.removeprefix("module.").removeprefix("backbone.")
        if not key.startswith("head."):
            out[key] = value
    return out


def dino_to_hf(sd: StateDict) -> StateDict:
    """facebookresearch/dino ViT backbone keys -> transformers ViTModel (add_pooling_layer=False) keys."""
    out, rest = _rename(unwrap_dino_checkpoint(sd), _DINO_RENAMES, reverse=False)
    # qkv.weight is [3D, D] stacked as (q; k; v), which is how timm/DINO split it at run time.
    rest = _split_qkv(rest, _DINO_QKV, out)
    _fail_on_leftovers(rest, "DINO checkpoint")
    return out


def hf_to_dino(sd: StateDict) -> StateDict:
    """Inverse of dino_to_hf."""
    out, rest = _rename(sd, _DINO_RENAMES, reverse=True)
    rest = _merge_qkv(rest, _DINO_QKV, out)
    _fail_on_leftovers(rest, "transformers ViT state dict")
    return out


def clip_visual_to_hf(sd: StateDict) -> StateDict:
    """OpenAI CLIP (visual.* keys; text keys ignored) -> CLIPVisionModelWithProjection keys."""
    visual = {k: v for k, v in sd.items() if k.startswith("visual.")}
    if not visual:
        raise ValueError("OpenAI CLIP checkpoint has no 'visual.*' keys")
    out, rest = _rename(visual, _CLIP_RENAMES, reverse=False)
    rest = _split_qkv(rest, _CLIP_QKV, out)
    if _CLIP_PROJ[0] in rest:
        # OpenAI multiplies x @ proj with proj [width, embed]; nn.Linear stores [embed, width].
        out[_CLIP_PROJ[1]] = rest.pop(_CLIP_PROJ[0]).t().contiguous()
    _fail_on_leftovers(rest, "OpenAI CLIP checkpoint")
    return out


def hf_to_clip_visual(sd: StateDict) -> StateDict:
    """Inverse of clip_visual_to_hf."""
    sd = dict(sd)
    proj = sd.pop(_CLIP_PROJ[1], None)
    out, rest = _rename(sd, _CLIP_RENAMES, reverse=True)
    rest = _merge_qkv(rest, _CLIP_QKV, out)
    if proj is not None:
        out[_CLIP_PROJ[0]] = proj.t().contiguous()
    _fail_on_leftovers(rest, "transformers CLIP vision state dict")
    return out


def _count_blocks(sd: StateDict, prefix: str) -> int:
    rx = re.compile(re.escape(prefix) + r"(\d+)\.")
    blocks = {int(m[1]) for k in sd if (m := rx.match(k))}
    if not blocks or blocks != set(range(len(blocks))):
        raise ValueError(
            f"checkpoint blocks under {prefix!r} are missing or not contiguous: {sorted(blocks)}"
        )
    return len(blocks)


def dino_config(sd: StateDict, num_heads: int | None = None) -> ViTConfig:
    """ViTConfig matching an original-layout DINO state dict (shapes -> sizes)."""
    sd = unwrap_dino_checkpoint(sd)
    width = sd["cls_token"].shape[-1]
    patch = sd["patch_embed.proj.weight"].shape[-1]
    grid = round((sd["pos_embed"].shape[1] - 1) ** 0.5)
    return ViTConfig(
        hidden_size=width,
        num_hidden_layers=_count_blocks(sd, "blocks."),
        num_attention_heads=num_heads or max(1, width // HEAD_DIM),
        intermediate_size=sd["blocks.0.mlp.fc1.weight"].shape[0],
        patch_size=patch,
        image_size=grid * patch,
        num_channels=sd["patch_embed.proj.weight"].shape[1],
        layer_norm_eps=DINO_LAYER_NORM_EPS,
        hidden_act="gelu",
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
    )


def clip_vision_config(sd: StateDict, num_heads: int | None = None) -> CLIPVisionConfig:
    """CLIPVisionConfig matching an OpenAI CLIP state dict (shapes -> sizes)."""
    width = sd["visual.conv1.weight"].shape[0]
    patch = sd["visual.conv1.weight"].shape[-1]
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_count_blocks(sd, "visual.transformer.resblocks."),
        num_attention_heads=num_heads or max(1, width // HEAD_DIM),
        image_size=grid * patch,
        patch_size=patch,
        projection_dim=sd["visual.proj"].shape[1],
        num_channels=sd["visual.conv1.weight"].shape[1],
        hidden_act=CLIP_ACTIVATION,
        layer_norm_eps=CLIP_LAYER_NORM_EPS,
    )


# OpenAI CLIP's text transformer (ViCLIP's text tower keeps these names under ``text_encoder.``).
_CLIP_TEXT_RENAMES = [
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("transformer.resblocks.{i}.ln_1.{p}", "text_model.encoder.layers.{i}.layer_norm1.{p}"),
    ("transformer.resblocks.{i}.ln_2.{p}", "text_model.encoder.layers.{i}.layer_norm2.{p}"),
    ("transformer.resblocks.{i}.attn.out_proj.{p}", "text_model.encoder.layers.{i}.self_attn.out_proj.{p}"),
    ("transformer.resblocks.{i}.mlp.c_fc.{p}", "text_model.encoder.layers.{i}.mlp.fc1.{p}"),
    ("transformer.resblocks.{i}.mlp.c_proj.{p}", "text_model.encoder.layers.{i}.mlp.fc2.{p}"),
    ("ln_final.{p}", "text_model.final_layer_norm.{p}"),
]
_CLIP_TEXT_QKV = (
    "transformer.resblocks.{i}.attn.in_proj_{p}",
    "text_model.encoder.layers.{i}.self_attn.{n}_proj.{p}",
)
_CLIP_TEXT_PROJ = ("text_projection", "text_projection.weight")


def clip_text_to_hf(sd: StateDict) -> StateDict:
    """OpenAI CLIP text-tower keys (no prefix) -> CLIPTextModelWithProjection keys."""
    out, rest = _rename(sd, _CLIP_TEXT_RENAMES, reverse=False)
    rest = _split_qkv(rest, _CLIP_TEXT_QKV, out)
    if _CLIP_TEXT_PROJ[0] in rest:
        # OpenAI multiplies x @ text_projection [width, embed]; nn.Linear stores [embed, width].
        out[_CLIP_TEXT_PROJ[1]] = rest.pop(_CLIP_TEXT_PROJ[0]).t().contiguous()
    _fail_on_leftovers(rest, "CLIP text checkpoint")
    return out


def hf_to_clip_text(sd: StateDict) -> StateDict:
    """Inverse of clip_text_to_hf."""
    sd = dict(sd)
    proj = sd.pop(_CLIP_TEXT_PROJ[1], None)
    out, rest = _rename(sd, _CLIP_TEXT_RENAMES, reverse=True)
    rest = _merge_qkv(rest, _CLIP_TEXT_QKV, out)
    if proj is not None:
        out[_CLIP_TEXT_PROJ[0]] = proj.t().contiguous()
    _fail_on_leftovers(rest, "transformers CLIP text state dict")
    return out
