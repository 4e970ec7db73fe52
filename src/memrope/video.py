"""Streaming video output: frames are encoded and flushed as chunks arrive.

Two codecs, chosen by the file's suffix:

- ``.mp4``: H.264 (libx264, ``crf`` quality, 0..51, default 18; yuv420p, so even ``crf=0`` is not
  RGB-exact) in a fragmented MP4 (``frag_keyframe+empty_moov+default_base_moof``): every flushed
  fragment is playable even if the process dies later. Frame sizes are padded to even numbers as
  yuv420p requires.
- ``.mkv``: FFV1 (lossless, intra-only) in Matroska, RGB stored as ``bgr0``: the decoded frames are
  bit for bit the frames written. For evaluation, where lossy coding would be measured as drift.

Nothing but the encoder's small look-ahead is held in memory, however long the video.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

DEFAULT_FPS = 16  # Wan2.1 / Self-Forcing output frame rate
FRAGMENTED_MP4 = "frag_keyframe+empty_moov+default_base_moof"
DEFAULT_CRF = 18  # visually lossless-ish x264 quality
KEYFRAME_INTERVAL = 16  # one fragment per second at 16 fps: at most a second lost on a crash
LOSSLESS_PIXELS = "bgr0"  # FFV1's packed RGB: no colour conversion, so no rounding
CODECS = {".mp4": "h264", ".mkv": "ffv1"}


class VideoWriter:
    """Appends uint8 frames [T, H, W, 3] to an H.264 fragmented MP4 or an FFV1 Matroska file."""

    def __init__(self, path: str | Path, fps: int = DEFAULT_FPS, crf: int = DEFAULT_CRF,
                 preset: str = "veryfast"):
        if fps < 1:
            raise ValueError(f"fps must be >= 1, got {fps}")
        self.path = Path(path)
        if self.path.suffix.lower() not in CODECS:
            raise ValueError(f"output must be an .mp4 (H.264) or .mkv (FFV1, lossless) file, got {self.path}")
        self.codec = CODECS[self.path.suffix.lower()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps, self.crf, self.preset = fps, crf, preset
        self.frames_written = 0
        self._container = None
        self._stream = None

    def _open(self, height: int, width: int) -> None:
        if self.codec == "ffv1":
            self._container = av.open(str(self.path), mode="w", format="matroska", options={"flush_packets": "1"})
            stream = self._container.add_stream("ffv1", rate=Fraction(self.fps, 1))
            stream.width, stream.height, stream.pix_fmt = width, height, LOSSLESS_PIXELS
            self._stream = stream
            return
        self._container = av.open(str(self.path), mode="w", format="mp4",
                                  options={"movflags": FRAGMENTED_MP4, "flush_packets": "1"})
        stream = self._container.add_stream("libx264", rate=Fraction(self.fps, 1))
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        # zerolatency: no look-ahead or B-frames, so each frame leaves the encoder as it goes in and
        # every finished fragment reaches the disk at once (flush_packets).
        stream.options = {"crf": str(self.crf), "preset": self.preset, "g": str(KEYFRAME_INTERVAL),
                          "tune": "zerolatency"}
        self._stream = stream

    def write(self, frames: torch.Tensor | np.ndarray) -> None:
        arr = frames.cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [T, H, W, 3], got {arr.dtype} {list(arr.shape)}")
        if self._container is None:
            self._open(arr.shape[1], arr.shape[2])
        pad_h, pad_w = self._stream.height - arr.shape[1], self._stream.width - arr.shape[2]
        if pad_h < 0 or pad_w < 0 or pad_h > 1 or pad_w > 1:
            raise ValueError(f"frame size {arr.shape[1:3]} differs from the stream's first frames")
        if pad_h or pad_w:
            arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        for frame in arr:
            for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                self._container.mux(packet)
        self.frames_written += arr.shape[0]

    def close(self, sync: bool = False) -> None:
        """Flush the encoder and close the file; ``sync``: also make it durable (a checkpoint's segment)."""
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None
        if sync:
            with open(self.path, "rb") as f:
                os.fsync(f.fileno())

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def count_frames(path: str | Path) -> int:
    """Decode the whole file and count frames (what a player would show)."""
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def read_frames(path: str | Path) -> np.ndarray:
    """All frames as uint8 [T, H, W, 3] (small videos and tests only)."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
