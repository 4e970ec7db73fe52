"""Where each evaluation network's weights are looked for, and where they come from.

Nothing is ever downloaded. Under ``--weights-dir`` a network is found (first match wins) as
- a transformers folder (config.json + weights) named like its hub repository (DINO and CLIP only);
- VBench's cache layout (``~/.cache/vbench``: e.g. ``pyiqa_model/musiq_spaq_ckpt-358bb6af.pth``), as
  Vchitect/VBench@45e79ec1 ``vbench/utils.py`` init_submodules writes it;
- the same original file directly in the folder.
This module imports neither torch's networks nor transformers, so ``memrope weights check`` is cheap.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

HASH_CHUNK_BYTES = 1 << 20
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


@dataclass(frozen=True)
class NetworkSource:
    """One file (or folder) a dimension needs: where to look, what it is for, where it comes from."""

    name: str
    hf_dirs: tuple[str, ...]
    original_files: tuple[str, ...]
    dimensions: tuple[str, ...] = ()
    origin: str = ""


DINO_VITB16 = NetworkSource(
    "dino_vitb16",
    ("dino-vitb16", "facebook--dino-vitb16", "facebook/dino-vitb16"),
    ("dino_model/dino_vitbase16_pretrain.pth", "dino_vitbase16_pretrain.pth"),
    ("subject_consistency",),
    "facebookresearch/dino release dino_vitbase16_pretrain.pth (dl.fbaipublicfiles.com/dino/), or the "
    "transformers folder facebook/dino-vitb16",
)
CLIP_VITB32 = NetworkSource(
    "clip_vitb32",
    ("clip-vit-base-patch32", "openai--clip-vit-base-patch32", "openai/clip-vit-base-patch32"),
    ("clip_model/ViT-B-32.pt", "ViT-B-32.pt"),
    ("background_consistency",),
    "OpenAI CLIP ViT-B-32.pt (openaipublic.azureedge.net/clip/models/40d36571.../), or openai/clip-vit-base-patch32",
)
CLIP_VITL14 = NetworkSource(
    "clip_vitl14",
    ("clip-vit-large-patch14", "openai--clip-vit-large-patch14", "openai/clip-vit-large-patch14"),
    ("clip_model/ViT-L-14.pt", "ViT-L-14.pt"),
    ("aesthetic_quality",),
    "OpenAI CLIP ViT-L-14.pt (openaipublic.azureedge.net/clip/models/b8cca3fd.../), or openai/clip-vit-large-patch14",
)
LAION_AESTHETIC = NetworkSource(
    "laion_aesthetic_vitl14",
    (),
    ("aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth", "sa_0_4_vit_l_14_linear.pth",
     "sa_0_4_vit_l_14_linear.safetensors"),
    ("aesthetic_quality",),
    "LAION-AI/aesthetic-predictor sa_0_4_vit_l_14_linear.pth (VBench fetches it from that repository)",
)
MUSIQ_SPAQ = NetworkSource(
    "musiq_spaq",
    (),
    ("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth", "musiq_spaq_ckpt-358bb6af.pth"),
    ("imaging_quality",),
    "chaofengc/IQA-PyTorch release v0.1-weights musiq_spaq_ckpt-358bb6af.pth (VBench's URL; pyiqa now "
    "mirrors it on Hugging Face, chaofengc/IQA-PyTorch-Weights)",
)
RAFT_THINGS = NetworkSource(
    "raft_things",
    (),
    ("raft_model/models/raft-things.pth", "models/raft-things.pth", "raft-things.pth"),
    ("dynamic_degree",),
    "princeton-vl/RAFT models.zip (download_models.sh), file models/raft-things.pth",
)
AMT_S = NetworkSource(
    "amt_s",
    (),
    ("amt_model/amt-s.pth", "amt-s.pth"),
    ("motion_smoothness",),
    "MCG-NKU/AMT release amt-s.pth (VBench downloads it from Hugging Face lalala125/AMT)",
)
VICLIP_L14 = NetworkSource(
    "viclip_l14",
    (),
    ("ViCLIP/ViClip-InternVid-10M-FLT.pth", "ViClip-InternVid-10M-FLT.pth"),
    ("overall_consistency",),
    "OpenGVLab/InternVideo ViCLIP-L/14 InternVid-10M-FLT (VBench downloads it from Hugging Face "
    "OpenGVLab/VBench_Used_Models)",
)
CLIP_BPE_VOCAB = NetworkSource(
    "clip_bpe_vocab",
    (),
    ("ViCLIP/bpe_simple_vocab_16e6.txt.gz", "bpe_simple_vocab_16e6.txt.gz"),
    ("overall_consistency",),
    "openai/CLIP clip/bpe_simple_vocab_16e6.txt.gz (ViCLIP's tokenizer vocabulary)",
)

ALL_SOURCES = (DINO_VITB16, CLIP_VITB32, CLIP_VITL14, LAION_AESTHETIC, MUSIQ_SPAQ, RAFT_THINGS, AMT_S, VICLIP_L14,
               CLIP_BPE_VOCAB)


@dataclass(frozen=True)
class LocatedWeights:
    """A network found on disk: 'hf' folder or 'original' file, and the files whose hashes are reported."""

    source: NetworkSource
    kind: str
    path: Path
    files: tuple[Path, ...]


class WeightsMissing(LookupError):
    """No usable weights for a network in the weights folder (the metric is skipped, not downloaded)."""


def searched(source: NetworkSource) -> list[str]:
    return [f"{n}/config.json" for n in source.hf_dirs] + list(source.original_files)


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
    raise WeightsMissing(f"{source.name}: none of {searched(source)} under {root}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def hashes(located: LocatedWeights) -> dict[str, str]:
    """sha256 of every weight file used, keyed by path relative to the weights folder root."""
    return {str(p): file_sha256(p) for p in located.files}
