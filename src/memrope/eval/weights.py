"""Finding and loading the evaluation networks from a local folder only: nothing is ever downloaded.

Accepted layouts under --weights-dir (first match wins, per network):
- a transformers folder (config.json + weights) named like the hub repo, e.g. `dino-vitb16/`,
  `clip-vit-base-patch32/`, `clip-vit-large-patch14/`;
- VBench's cache layout: `dino_model/dino_vitbase16_pretrain.pth`, `clip_model/ViT-B-32.pt`,
  `clip_model/ViT-L-14.pt`, `aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth`;
- the same original files directly in the folder.
Original files go through the converters in `converters.py`. A missing network is reported as
skipped with the places that were searched.
"""

from __future__ import annotations

import hashlib
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
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

HASH_CHUNK_BYTES = 1 << 20
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


@dataclass(frozen=True)
class NetworkSource:
    """Where to look for one network: transformers folder names and original checkpoint paths."""

    name: str
    hf_dirs: tuple[str, ...]
    original_files: tuple[str, ...]


DINO_VITB16 = NetworkSource(
    "dino_vitb16",
    ("dino-vitb16", "facebook--dino-vitb16", "facebook/dino-vitb16"),
    ("dino_model/dino_vitbase16_pretrain.pth", "dino_vitbase16_pretrain.pth"),
)
CLIP_VITB32 = NetworkSource(
    "clip_vitb32",
    ("clip-vit-base-patch32", "openai--clip-vit-base-patch32", "openai/clip-vit-base-patch32"),
    ("clip_model/ViT-B-32.pt", "ViT-B-32.pt"),
)
CLIP_VITL14 = NetworkSource(
    "clip_vitl14",
    ("clip-vit-large-patch14", "openai--clip-vit-large-patch14", "openai/clip-vit-large-patch14"),
    ("clip_model/ViT-L-14.pt", "ViT-L-14.pt"),
)
LAION_AESTHETIC = NetworkSource(
    "laion_aesthetic_vitl14",
    (),
    (
        "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth",
        "sa_0_4_vit_l_14_linear.pth",
        "sa_0_4_vit_l_14_linear.safetensors",
    ),
)


@dataclass(frozen=True)
class LocatedWeights:
    """A network found on disk: 'hf' folder or 'original' file, and the files whose hashes are reported."""

    source: NetworkSource
    kind: str
    path: Path
    files: tuple[Path, ...]


class WeightsMissing(LookupError):
    """No usable weights for a network in the weights folder (the metric is skipped, not downloaded)."""


def locate(weights_dir: str | Path | None, source: NetworkSource) -> LocatedWeights:
    """Find a network's weights in `weights_dir`; raise WeightsMissing with every place searched."""
    if weights_dir is None:
        raise WeightsMissing(f"{source.name}: no --weights-dir given")
    root = Path(weights_dir)
    if not root.is_dir():
        raise WeightsMissing(f"{source.name}: weights dir {root} does not exist")
    for name in source.hf_dirs:
        folder = root / name
        if (folder / "config.json").is_file():
            files = tuple(sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES))
            if files:
                return LocatedWeights(source, "hf", folder, files)
    for name in source.original_files:
        file = root / name
        if file.is_file():
            return LocatedWeights(source, "original", file, (file,))
    searched = [f"{n}/config.json" for n in source.hf_dirs] + list(source.original_files)
    raise WeightsMissing(f"{source.name}: none of {searched} under {root}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def hashes(located: LocatedWeights) -> dict[str, str]:
    """sha256 of every weight file used, keyed by path relative to the weights folder root."""
    return {str(p): file_sha256(p) for p in located.files}


def read_checkpoint(path: Path) -> dict:
    """Load an original checkpoint as a state dict: safetensors, TorchScript archive (OpenAI CLIP .pt),
    or a pickled state dict (loaded with weights_only=True)."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            scripted = any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
        if scripted:
            with (
                warnings.catch_warnings()
            ):  # torch >= 2.9 deprecates TorchScript; the file format is OpenAI's
                warnings.simplefilter("ignore", DeprecationWarning)
                return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return sd


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
