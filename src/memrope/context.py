"""Streams that start from an image or a video: its frames, encoded by the model's own encoder, become
clean context chunks that the stream commits into its cache before it generates anything.

The encoder is the decoder's other half (``decoder.encoder()``): the embedded model's per-frame
``WorldEncoder`` (its ``FrameAutoencoder``), or the Wan VAE's causal encoder for the real models
(:class:`memrope.models.vae_encoder.WanStreamingEncoder`, fed chunk by chunk with its state carried,
so a long clip costs the memory of one chunk). What is committed:

- a **video**: its last frames that make whole chunks: ``L`` latent frames, ``L`` the largest
  multiple of the chunk (at most ``max_chunks`` chunks) whose frame count (``L`` frames for the
  embedded model; ``1 + 4 (L - 1)`` for the Wan VAE) the video has. The stream continues right
  after the video's last frame;
- an **image**: a still clip of one chunk (the image repeated for the chunk's frames): the chunk's
  latent frames must be whole, and a still is what a single picture says about time.

Frames of another size are scaled to the model's frame size (PyAV's scaler, bilinear). Decoded frames
of a video are read once, keeping only the last ``max_chunks`` chunks' worth (a bounded deque).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")
DEFAULT_INIT_CHUNKS = 4
MAX_INIT_CHUNKS = 64
"""Most context chunks a stream commits (about 12 s of the embedded model, 2 min of Wan at 16 fps)."""


class ContextError(ValueError):
    """An image or video that cannot start a stream (unreadable, too short, of no frames)."""


@dataclass(frozen=True)
class Context:
    """Clean latents of the frames a stream continues, one [1, C, chunk, h, w] tensor per chunk."""

    chunks: tuple[torch.Tensor, ...]
    frames: int  # pixel frames of the input that they encode
    kind: str  # "image" | "video"

    def by_chunk(self, first: int = 0) -> dict[int, torch.Tensor]:
        """Chunk index -> latents, for the chunks from ``first`` on (a resumed stream skips the others)."""
        return {k: c for k, c in enumerate(self.chunks) if k >= first}


def kind_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    raise ContextError(f"{path}: an image ({', '.join(IMAGE_SUFFIXES)}) or a video ({', '.join(VIDEO_SUFFIXES)}) "
                       f"can start a stream, not {suffix or 'a file without a suffix'}")


def read_frames(path: Path, height: int, width: int, keep: int) -> tuple[np.ndarray, int]:
    """The last ``keep`` frames of ``path`` as uint8 [T, height, width, 3] (scaled), and how many it has."""
    import av

    last: deque[np.ndarray] = deque(maxlen=keep)
    total = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ContextError(f"{path} holds no video stream")
            for frame in container.decode(video=0):
                last.append(frame.to_ndarray(format="rgb24", width=width, height=height))
                total += 1
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise ContextError(f"{path} cannot be read as an image or a video ({e})".splitlines()[0]) from None
    if not total:
        raise ContextError(f"{path} holds no frames")
    return np.stack(last), total


def chunk_frame_counts(encoder: Any, chunk_frames: int, chunks: int) -> list[int]:
    """Pixel frames each of ``chunks`` context chunks takes (the first of a clip may take fewer)."""
    return [encoder.frames_for(chunk_frames, first=k == 0) for k in range(chunks)]


def encode_frames(frames: np.ndarray, encoder: Any, chunk_frames: int) -> tuple[torch.Tensor, ...]:
    """uint8 [T, H, W, 3] whose T fits whole chunks -> one latent tensor per chunk (causal, in order)."""
    encoder.reset()
    out, at = [], 0
    while at < len(frames):
        n = encoder.frames_for(chunk_frames, first=at == 0)
        latents = encoder.encode(torch.from_numpy(np.ascontiguousarray(frames[at:at + n])))  # [1, C, chunk, h, w]
        if latents.shape[2] != chunk_frames:
            raise ContextError(f"the encoder gave {latents.shape[2]} latent frames for {n} frames, "
                               f"expected {chunk_frames}")
        out.append(latents)
        at += n
    encoder.reset()
    return tuple(out)


def load_context(path: str | Path, decoder: Any, frame_hw: tuple[int, int], chunk_frames: int,
                 max_chunks: int = DEFAULT_INIT_CHUNKS) -> Context:
    """The context chunks of an image or a video for a model whose decoder is ``decoder``."""
    path = Path(path)
    if not 1 <= max_chunks <= MAX_INIT_CHUNKS:
        raise ContextError(f"the context is 1 to {MAX_INIT_CHUNKS} chunks, got {max_chunks}")
    kind = kind_of(path)
    if not path.is_file():
        raise ContextError(f"{path} does not exist or is not a file")
    make_encoder = getattr(decoder, "encoder", None)
    if make_encoder is None:
        raise ContextError("this model's decoder has no encoder, so it cannot start from an image or a video")
    encoder = make_encoder()
    counts = chunk_frame_counts(encoder, chunk_frames, max_chunks)
    frames, total = read_frames(path, *frame_hw, keep=sum(counts))
    if kind == "image" or total == 1:
        still = np.repeat(frames[-1:], counts[0], axis=0)  # [chunk frames, H, W, 3]
        return Context(encode_frames(still, encoder, chunk_frames), 1, "image")
    chunks = max((n for n in range(1, max_chunks + 1) if sum(counts[:n]) <= total), default=0)
    if not chunks:
        raise ContextError(f"{path} has {total} frames; a video needs at least {counts[0]} (one chunk) to start a "
                           f"stream (an image makes a still chunk)")
    used = frames[len(frames) - sum(counts[:chunks]):]
    return Context(encode_frames(used, encoder, chunk_frames), len(used), "video")
