"""Synthetic videos for the evaluation tests, written with PyAV into tmp_path."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import av
import numpy as np
import pytest

FPS = 16
WIDTH, HEIGHT = 128, 72


def write_video(
    path: Path, frames: Iterable[np.ndarray], fps: int = FPS, lossless: bool = True, preset: str = "ultrafast"
) -> Path:
    """Encode RGB uint8 frames to H.264 MP4 (lossless by default so tests see exact pixel values)."""
    frames = iter(frames)
    first = next(frames)
    h, w = first.shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv444p" if lossless else "yuv420p"
        stream.options = {"preset": preset, **({"qp": "0"} if lossless else {"crf": "23"})}
        for rgb in _chain(first, frames):
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            ):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _chain(first: np.ndarray, rest: Iterable[np.ndarray]):
    yield first
    yield from rest


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB texture (blurred noise) so optical flow has structure to track."""
    import cv2

    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 2.0)


def panning(n: int, h: int = HEIGHT, w: int = WIDTH, speed: int = 3, seed: int = 0) -> Iterable[np.ndarray]:
    """A window sliding right over a wide texture at `speed` px per frame (constant motion, never repeats)."""
    big = texture(h, w + speed * n + 1, seed)
    for t in range(n):
        yield big[:, t * speed : t * speed + w]


@pytest.fixture
def video(tmp_path: Path) -> Callable[..., Path]:
    """video(name, frames, **kw) -> path of an encoded synthetic video."""

    def make(name: str, frames: Iterable[np.ndarray], **kw) -> Path:
        return write_video(tmp_path / f"{name}.mp4", frames, **kw)

    return make
