"""One chunk of frames -> one self-contained fragmented MP4, in memory, for a browser's Media Source.

Every chunk is its own small file (``ftyp`` + ``moov`` + one ``moof``/``mdat`` pair) from a fresh
H.264 encoder, so its first frame is a key frame and it decodes without any earlier chunk. The page
appends chunks to a ``SourceBuffer`` in ``"sequence"`` mode, which lays each one right after the
previous whatever its own timestamps: a viewer can join at any chunk, and a chunk dropped for a slow
viewer (``memrope.serve.live``) leaves no hole in its timeline, only a jump in the picture.

Why not one long fragmented stream: the MP4 muxer holds each fragment's last frame until the next
frame arrives (it learns a fragment ends from the next packet), so a paused stream would hide its
last frame, and a dropped fragment would break the decoding of those after it.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np

FRAGMENTED = "frag_keyframe+empty_moov+default_base_moof"
PRESET = "veryfast"
TUNE = "zerolatency"  # no look-ahead, no B-frames: each frame leaves the encoder as it goes in
AVIO_BUFFER = 4096  # bytes the muxer buffers before writing to memory


class ChunkEncoder:
    """uint8 frames [T, H, W, 3] of one chunk -> bytes of one fragmented MP4 (H.264, yuv420p)."""

    def __init__(self, fps: int, crf: int):
        if fps < 1:
            raise ValueError(f"fps must be >= 1, got {fps}")
        self.fps, self.crf = fps, crf
        self.codec: str | None = None  # e.g. avc1.64000a, known after the first chunk

    def encode(self, frames: np.ndarray) -> bytes:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
            raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
        h, w = frames.shape[1:3]
        if h % 2 or w % 2:  # yuv420p needs even sides
            frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        out = io.BytesIO()
        with av.open(out, mode="w", format="mp4", options={"movflags": FRAGMENTED}, buffer_size=AVIO_BUFFER) as c:
            stream = c.add_stream("libx264", rate=Fraction(self.fps, 1))
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            stream.options = {"crf": str(self.crf), "preset": PRESET, "tune": TUNE, "g": str(len(frames))}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    c.mux(packet)
            for packet in stream.encode():
                c.mux(packet)
        data = out.getvalue()
        if self.codec is None:
            self.codec = avc1_codec(data)
        return data


def avc1_codec(mp4: bytes) -> str:
    """The RFC 6381 codec string (``avc1.PPCCLL``: profile, constraints, level) of the H.264 track of an
    MP4, read from its ``avcC`` record (ISO/IEC 14496-15: version 1, then those three bytes)."""
    at = mp4.find(b"avcC")
    record = mp4[at + 4:at + 8] if at >= 0 else b""
    if len(record) < 4 or record[0] != 1:
        raise ValueError("no H.264 decoder configuration (avcC) in the encoded chunk")
    return "avc1." + record[1:4].hex().upper()
