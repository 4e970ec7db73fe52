"""Lazy, constant-memory video reading with PyAV.

Frames are decoded one at a time and handed out as numpy arrays; nothing but the current frame is
held, so an hour-long video costs the same memory as a two-second one. Temporal subsampling (keep
every k-th frame) and downscaling (swscale inside FFmpeg, before the copy to numpy) are optional.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about the first video stream (frame count may be unknown: 0)."""

    path: str
    width: int
    height: int
    fps: float
    frame_count: int
    duration_s: float | None
    codec: str


@dataclass(frozen=True)
class Frame:
    """One decoded frame: absolute index in the stream, time in seconds (index / fps), RGB uint8 HxWx3."""

    index: int
    time_s: float
    rgb: np.ndarray


def probe_video(path: str | Path) -> VideoInfo:
    """Read stream metadata without decoding frames."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"video {path} does not exist or is not a file")
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise ValueError(f"{path}: the video stream declares no frame rate")
        fps = float(Fraction(rate))
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        return VideoInfo(
            path=str(path),
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=fps,
            frame_count=int(stream.frames or 0),
            duration_s=duration,
            codec=stream.codec_context.name,
        )


def scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) with the short side at most `short_side`, aspect kept, both even (for codecs)."""
    if short_side is None or min(width, height) <= short_side:
        return width, height
    scale = short_side / min(width, height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def iter_frames(
    path: str | Path,
    *,
    stride: int = 1,
    short_side: int | None = None,
    max_seconds: float | None = None,
    threads: int = 0,
) -> Iterator[Frame]:
    """Yield every `stride`-th frame of the first video stream, optionally downscaled.

    Frame times are index / fps (the stream's average rate), which is what segmenting needs and is
    robust to containers with missing or odd timestamps. `threads` = 0 lets FFmpeg choose.
    """
    if stride < 1:
        raise ValueError(f"stride={stride}: must be >= 1")
    info = probe_video(path)
    size = scaled_size(info.width, info.height, short_side)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if threads:
            stream.thread_count = threads
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            time_s = index / info.fps
            if max_seconds is not None and time_s >= max_seconds:
                return
            if index % stride:
                continue
            if size != (info.width, info.height):
                rgb = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
            else:
                rgb = frame.to_ndarray(format="rgb24")
            yield Frame(index=index, time_s=time_s, rgb=rgb)
