"""Finding and loading the evaluation networks from a local folder only: nothing is ever downloaded.

Where each network is looked for is `weight_sources` (transformers folders, VBench's cache layout,
the original files); this module loads DINO, CLIP and the LAION head, original files going through
the converters in `converters.py`. The networks of `memrope.eval.nets` load through their own
modules. A missing network is reported as skipped with the places that were searched.
"""

from __future__ import annotations

from torch import nn
from transformers import CLIPVisionModelWithProjection, ViTModel

from memrope.eval.converters import (
    DINO_LAYER_NORM_EPS,
    clip_vision_config,
    clip_visual_to_hf,
    dino_config,
    dino_to_hf,
)
from memrope.eval.dino_positions import use_dino_interpolation
from memrope.eval.nets.loading import read_checkpoint
from memrope.eval.weight_sources import (  # noqa: F401  (re-exported: the loaders' public names)
    ALL_SOURCES,
    AMT_S,
    CLIP_BPE_VOCAB,
    CLIP_VITB32,
    CLIP_VITL14,
    DINO_VITB16,
    LAION_AESTHETIC,
    MUSIQ_SPAQ,
    RAFT_THINGS,
    VICLIP_L14,
    LocatedWeights,
    NetworkSource,
    WeightsMissing,
    file_sha256,
    hashes,
    locate,
)


def _load_strict(model: nn.Module, sd: dict, what: str) -> nn.Module:
    sd = {k: v.float() for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"{what}: missing keys {missing[:6]}, unexpected keys {unexpected[:6]}")
    return model.eval()


def load_dino(located: LocatedWeights) -> ViTModel:
    """DINO ViT as a transformers ViTModel without pooler, float32, eval mode, DINO's pos-embed resize."""
    if located.kind == "hf":
        # DINO's LayerNorm eps is 1e-6 whatever a folder's config says (transformers' default is 1e-12)
        model = ViTModel.from_pretrained(
            located.path, local_files_only=True, add_pooling_layer=False, layer_norm_eps=DINO_LAYER_NORM_EPS
        )
    else:
        sd = read_checkpoint(located.path)
        model = ViTModel(dino_config(sd), add_pooling_layer=False)
        _load_strict(model, dino_to_hf(sd), f"DINO {located.path}")
    use_dino_interpolation(model)  # position embeddings resized exactly as VBench's hub DINO does
    return model.float().eval()


def load_clip_vision(located: LocatedWeights) -> CLIPVisionModelWithProjection:
    """CLIP image tower with its projection (image_embeds == OpenAI encode_image), float32, eval mode."""
    if located.kind == "hf":
        return (
            CLIPVisionModelWithProjection.from_pretrained(located.path, local_files_only=True).float().eval()
        )
    sd = read_checkpoint(located.path)
    model = CLIPVisionModelWithProjection(clip_vision_config(sd))
    return _load_strict(model, clip_visual_to_hf(sd), f"CLIP {located.path}")


def load_aesthetic_head(located: LocatedWeights) -> nn.Linear:
    """LAION aesthetic linear head (768 -> 1); the checkpoint holds just 'weight' and 'bias'."""
    sd = read_checkpoint(located.path)
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if set(sd) != {"weight", "bias"}:
        raise ValueError(f"{located.path}: expected keys weight/bias of a linear head, got {sorted(sd)}")
    out_dim, in_dim = sd["weight"].shape
    head = nn.Linear(in_dim, out_dim)
    return _load_strict(head, sd, f"aesthetic head {located.path}")
