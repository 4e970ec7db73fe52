"""VBench's image preprocessing, reproduced on torch tensors (torchvision does not load here).

VBench hands uint8 frames to torchvision transforms; torchvision's tensor resize then interpolates in
float, rounds and casts back to uint8 (bicubic additionally clamps to 0..255), and only afterwards
divides by 255. Those steps are copied literally, because they change the features measurably.
- DINO (subject consistency): Resize(224) on the short side, bilinear, antialias=False, no crop,
  ImageNet normalisation; the long side is int(224 * long / short) as torchvision computes it.
- CLIP (background consistency, aesthetic): Resize(224, bicubic, antialias=False), CenterCrop(224),
  CLIP normalisation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

VBENCH_IMAGE_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# OpenAI CLIP's normalisation constants (clip/clip.py _transform).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision's Resize(int): short side -> size, long side int(size * long / short) (truncated)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def _to_uint8_batch(frames: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    arr = np.stack(frames) if isinstance(frames, list) else np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames of shape (N, H, W, 3), got {arr.shape} {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)  # (N, 3, H, W) uint8


def _resize_like_torchvision(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    out = F.interpolate(x.float(), size=size, mode=mode, align_corners=False, antialias=False)
    if mode == "bicubic":
        out = out.clamp(0, 255)
    return out.round()  # torchvision casts back to the input's uint8


def _normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x / 255.0 - m) / s


def dino_inputs(frames, size: int = VBENCH_IMAGE_SIZE) -> torch.Tensor:
    """VBench dino_transform: (N, 3, 224, L) float32, aspect kept, no crop."""
    x = _to_uint8_batch(frames)
    x = _resize_like_torchvision(x, short_side_size(x.shape[2], x.shape[3], size), "bilinear")
    return _normalise(x, IMAGENET_MEAN, IMAGENET_STD)


def clip_crops(frames, size: int = VBENCH_IMAGE_SIZE) -> torch.Tensor:
    """VBench clip_transform before its normalisation: (N, 3, 224, 224) uint8 after the bicubic resize
    (rounded and clamped back to uint8, as torchvision does) and the centre crop."""
    x = _to_uint8_batch(frames)
    x = _resize_like_torchvision(x, short_side_size(x.shape[2], x.shape[3], size), "bicubic")
    h, w = x.shape[2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[:, :, top : top + size, left : left + size].to(torch.uint8)


def clip_normalise(crops: torch.Tensor) -> torch.Tensor:
    """The rest of clip_transform: / 255 and CLIP's mean and std."""
    return _normalise(crops.float(), CLIP_MEAN, CLIP_STD)


def clip_inputs(frames, size: int = VBENCH_IMAGE_SIZE) -> torch.Tensor:
    """VBench clip_transform: (N, 3, 224, 224) float32 after bicubic resize and centre crop."""
    return clip_normalise(clip_crops(frames, size))
