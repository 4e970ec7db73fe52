"""DINO's own positional-embedding interpolation, for transformers' ViTModel.

VBench runs facebookresearch/dino's ViT, which resizes the 14x14 grid of position embeddings with
`interpolate(scale_factor=((h0 + 0.1) / 14, (w0 + 0.1) / 14), mode="bicubic")` (the +0.1 avoids a
floating-point off-by-one, dino issue #8). transformers' ViTEmbeddings interpolates to an explicit
`size=(h0, w0)` instead; PyTorch maps output to input coordinates with the given scale factor in the
first case and with in/out in the second, so the sampled embeddings differ slightly for non-square
inputs (VBench's 224 x L frames). Binding this function onto the embeddings module reproduces DINO.
"""

from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F

# dino/vision_transformer.py: "we add a small number to avoid floating point error in the interpolation"
DINO_SCALE_EPSILON = 0.1


def dino_interpolate(position_embeddings: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    """Position embeddings (1, 1 + N, D) for a height x width input, exactly as DINO computes them."""
    n = position_embeddings.shape[1] - 1
    n_h, n_w = height // patch, width // patch
    if n_h * n_w == n and height == width:
        return position_embeddings
    side = int(math.sqrt(n))
    cls_pos, grid = position_embeddings[:, :1], position_embeddings[:, 1:]
    dim = grid.shape[-1]
    h0, w0 = n_h + DINO_SCALE_EPSILON, n_w + DINO_SCALE_EPSILON
    grid = F.interpolate(
        grid.reshape(1, side, side, dim).permute(0, 3, 1, 2),  # (1, D, side, side)
        scale_factor=(h0 / math.sqrt(n), w0 / math.sqrt(n)),
        mode="bicubic",
    )
    if grid.shape[-2:] != (n_h, n_w):
        raise ValueError(f"DINO interpolation produced {tuple(grid.shape[-2:])}, expected {(n_h, n_w)}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, n_h * n_w, dim)
    return torch.cat((cls_pos, grid), dim=1)


def use_dino_interpolation(model) -> None:
    """Make a transformers ViTModel interpolate position embeddings the way DINO does (in place)."""
    embeddings = model.embeddings
    patch = model.config.patch_size

    def interpolate_pos_encoding(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return dino_interpolate(self.position_embeddings, height, width, patch)

    embeddings.interpolate_pos_encoding = types.MethodType(interpolate_pos_encoding, embeddings)
