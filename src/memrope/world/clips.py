"""Training clips of the toy world: (video, prompt) pairs drawn from seeds.

Clip ``i`` of a ``ClipSource`` is a pure function of (config, base seed, i): the prompt, the start
state and the frames are all derived from ``SeedSequence([seed, i])``, so a training run can be
reproduced, resumed or sharded across workers without storing any data.

Videos come as model tensors [T, 3, H, W]: float32 in [-1, 1] (``to_model_range``), the usual
range of a diffusion model's pixel space, or uint8 for storage and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from memrope.world.prompts import format_prompt, sample_spec
from memrope.world.raster import render_clip
from memrope.world.world import (
    MAX_OBJECTS,
    MIN_FRAME_SIDE,
    REFERENCE_SIDE,
    WorldSpec,
    WorldState,
    initial_state,
)

PIXEL_MAX = 255.0
"""Largest uint8 value; maps to +1 in model range."""

VIDEO_DTYPES = ("float32", "uint8")
"""Clip tensor types: float32 in [-1, 1] for a model, uint8 in [0, 255] for storage / metrics."""


@dataclass(frozen=True)
class ClipConfig:
    """What clips look like: length, frame size, scene complexity, tensor type."""

    n_frames: int = 16
    height: int = REFERENCE_SIDE
    width: int = REFERENCE_SIDE
    max_objects: int = MAX_OBJECTS
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not isinstance(self.n_frames, int) or self.n_frames < 1:
            raise ValueError(f"ClipConfig.n_frames must be an int >= 1, got {self.n_frames!r}")
        if not 1 <= self.max_objects <= MAX_OBJECTS:
            raise ValueError(f"ClipConfig.max_objects must be in 1..{MAX_OBJECTS}, got {self.max_objects}")
        if self.dtype not in VIDEO_DTYPES:
            raise ValueError(f"ClipConfig.dtype must be one of {VIDEO_DTYPES}, got {self.dtype!r}")
        for name in ("height", "width"):
            side = getattr(self, name)
            if not isinstance(side, int) or side < MIN_FRAME_SIDE:
                raise ValueError(f"ClipConfig.{name} must be an int >= {MIN_FRAME_SIDE}, got {side!r}")


@dataclass(frozen=True, eq=False)
class Clip:
    """One training example: video [T, 3, H, W] (float32 in [-1, 1] or uint8), its prompt and world."""

    video: torch.Tensor
    prompt: str
    spec: WorldSpec
    state: WorldState
    seed: int


def to_model_range(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [T, 3, H, W] in [-1, 1]."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # [T, 3, H, W]
    return video.to(torch.float32) * (2.0 / PIXEL_MAX) - 1.0


def from_model_range(video: torch.Tensor) -> np.ndarray:
    """float [T, 3, H, W] in [-1, 1] -> uint8 [T, H, W, 3] (clamped, rounded): what metrics read."""
    if video.ndim != 4 or video.shape[1] != 3:
        raise ValueError(f"video must be [T, 3, H, W], got {tuple(video.shape)}")
    pixels = ((video.detach().float().cpu().clamp(-1.0, 1.0) + 1.0) * (PIXEL_MAX / 2.0)).round()
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def sample_clip(seed: int, config: ClipConfig | None = None) -> Clip:
    """A random prompt and the first ``n_frames`` frames of its world, from ``seed``."""
    config = config or ClipConfig()
    prompt_seed, world_seed = np.random.SeedSequence(seed).generate_state(2)
    spec = sample_spec(int(prompt_seed), config.max_objects, config.height, config.width)
    state = initial_state(spec, int(world_seed))
    frames = render_clip(spec, state, config.n_frames).frames  # uint8 [T, H, W, 3]
    if config.dtype == "uint8":
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
    else:
        video = to_model_range(frames)
    return Clip(video=video, prompt=format_prompt(spec), spec=spec, state=state, seed=seed)


class ClipSource(torch.utils.data.Dataset):
    """An indexable, endless-in-practice set of clips: item i is ``sample_clip(seed(i))``.

    Returns (video [T, 3, H, W], prompt) so a default ``DataLoader`` collates a batch into
    ([B, T, 3, H, W], list of prompts).
    """

    def __init__(self, config: ClipConfig | None = None, seed: int = 0, size: int = 2**31 - 1):
        if size < 1:
            raise ValueError(f"ClipSource size must be >= 1, got {size}")
        self.config = config or ClipConfig()
        self.seed = seed
        self.size = size

    def __len__(self) -> int:
        return self.size

    def clip_seed(self, index: int) -> int:
        """The seed of item ``index``: independent streams per (base seed, index)."""
        return int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0])

    def clip(self, index: int) -> Clip:
        if not 0 <= index < self.size:
            raise IndexError(f"clip index {index} outside 0..{self.size - 1}")
        return sample_clip(self.clip_seed(index), self.config)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        clip = self.clip(index)
        return clip.video, clip.prompt


def sample_batch(n: int, seed: int, config: ClipConfig | None = None) -> tuple[torch.Tensor, list[str]]:
    """``n`` clips stacked: video [n, T, 3, H, W] and their prompts."""
    source = ClipSource(config, seed)
    clips = [source.clip(i) for i in range(n)]
    return torch.stack([c.video for c in clips]), [c.prompt for c in clips]
