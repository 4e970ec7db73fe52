"""Resumable runs: a run directory with video segments, a manifest and the generator's state.

Layout of a run directory::

    manifest.json             what was asked (the command's settings) and what is done
    segments/seg_000000.mp4   one fragmented MP4 per checkpoint interval
    segments/seg_000000.latents.safetensors   (with --save-latents) the clean latents
    state_000040.safetensors  the generator's state after chunk 40, named by the manifest

A checkpoint closes the current segment, writes a new state file, then the manifest that names it
- each to a temporary file renamed into place - and only then removes the older state. The
manifest is the single commit point: whatever moment a crash hits, the manifest names finished
segments and a state file that exists and matches them. Anything written after the last
checkpoint (a half segment after a crash) is discarded on resume and produced again, identically.
The final video is the segments remuxed (no re-encoding) into one file.

Manifest paths are names inside the run directory; anything else (absolute paths, ``..``) is
rejected, so a manifest cannot make memrope read or overwrite files elsewhere.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

MANIFEST = "manifest.json"
SEGMENTS = "segments"
STATE_NAME = re.compile(r"^state_\d{6}\.safetensors$")
MANIFEST_VERSION = 1
SEGMENT_NAME = re.compile(r"^seg_\d{6}\.mp4$")


class SessionError(ValueError):
    """A run directory that cannot be used (missing, foreign, inconsistent)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, json.dumps(payload, indent=1).encode("utf-8"))


@dataclass
class Segment:
    name: str  # file name inside segments/
    first_chunk: int
    chunks: int
    frames: int

    @classmethod
    def parse(cls, item: Any) -> Segment:
        if not isinstance(item, dict) or set(item) != {"name", "first_chunk", "chunks", "frames"}:
            raise SessionError(f"manifest segment entry malformed: {item!r}")
        name = item["name"]
        if not isinstance(name, str) or not SEGMENT_NAME.match(name):
            raise SessionError(f"manifest names a segment outside the run directory or of a foreign name: {name!r}")
        for key in ("first_chunk", "chunks", "frames"):
            if not isinstance(item[key], int) or isinstance(item[key], bool) or item[key] < 0:
                raise SessionError(f"manifest segment {name}: {key} must be a non-negative integer")
        return cls(name, item["first_chunk"], item["chunks"], item["frames"])


@dataclass
class Manifest:
    settings: dict[str, Any]  # the generate command's settings, to rebuild the run on resume
    segments: list[Segment] = field(default_factory=list)
    chunks_done: int = 0
    complete: bool = False
    chunk_stats: list[dict[str, Any]] = field(default_factory=list)
    state: str | None = None  # state file written together with this manifest

    def to_json(self) -> dict[str, Any]:
        return {"version": MANIFEST_VERSION, "settings": self.settings, "chunks_done": self.chunks_done,
                "complete": self.complete, "segments": [vars(s) for s in self.segments],
                "chunk_stats": self.chunk_stats, "state": self.state}

    @classmethod
    def from_json(cls, data: Any, source: str) -> Manifest:
        if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
            raise SessionError(f"{source} is not a memrope manifest (version {MANIFEST_VERSION})")
        for key, kind in (("settings", dict), ("segments", list), ("chunks_done", int), ("complete", bool),
                          ("chunk_stats", list)):
            if not isinstance(data.get(key), kind):
                raise SessionError(f"{source}: '{key}' missing or not a {kind.__name__}")
        segments = [Segment.parse(s) for s in data["segments"]]
        expected = 0
        for seg in segments:
            if seg.first_chunk != expected:
                raise SessionError(f"{source}: segments do not follow each other at chunk {expected}")
            expected += seg.chunks
        if expected != data["chunks_done"] or len(data["chunk_stats"]) != expected:
            raise SessionError(f"{source}: segments cover {expected} chunks but the manifest says "
                               f"{data['chunks_done']}")
        state = data.get("state")
        if state is not None and (not isinstance(state, str) or not STATE_NAME.match(state)):
            raise SessionError(f"{source}: state file name {state!r} is outside the run directory or foreign")
        if (state is None) != (expected == 0):
            raise SessionError(f"{source}: {expected} chunks done but state {state!r}")
        return cls(data["settings"], segments, data["chunks_done"], data["complete"], data["chunk_stats"], state)


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def segments_dir(self) -> Path:
        return self.path / SEGMENTS

    def segment_path(self, name: str) -> Path:
        if not SEGMENT_NAME.match(name):
            raise SessionError(f"segment name {name!r} is not allowed")
        return self.segments_dir / name

    def create(self, settings: dict[str, Any]) -> Manifest:
        if (self.path / MANIFEST).exists():
            raise SessionError(f"{self.path} already holds a run; continue it with --resume {self.path} "
                               f"or choose another --run-dir")
        self.segments_dir.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(settings)
        atomic_write_json(self.path / MANIFEST, manifest.to_json())
        return manifest

    def load(self) -> Manifest:
        path = self.path / MANIFEST
        if not path.is_file():
            raise SessionError(f"{self.path} is not a memrope run directory (no {MANIFEST})")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SessionError(f"{path} is not valid JSON ({e})") from None
        manifest = Manifest.from_json(data, str(path))
        for seg in manifest.segments:
            if not self.segment_path(seg.name).is_file():
                raise SessionError(f"{path} names segment {seg.name}, which is missing")
        return manifest

    def discard_unfinished(self, manifest: Manifest) -> None:
        """Remove files the manifest does not name (written after the last checkpoint)."""
        keep = {s.name for s in manifest.segments}
        for f in self.segments_dir.glob("seg_*"):
            if f.name.split(".")[0] + ".mp4" not in keep:
                f.unlink()
        self._remove_states(except_name=manifest.state)

    def _remove_states(self, except_name: str | None) -> None:
        for f in self.path.glob("state_*.safetensors*"):
            if f.name != except_name:
                f.unlink()

    def save_state(self, name: str, tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
        if not STATE_NAME.match(name):
            raise SessionError(f"state name {name!r} is not allowed")
        tmp = self.path / (name + ".tmp")
        save_file({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, str(tmp),
                  metadata={"memrope_state": json.dumps(data)})
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path / name)

    def load_state(self, manifest: Manifest) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        path = self.path / (manifest.state or "")
        if manifest.state is None or not path.is_file():
            raise SessionError(f"{self.path} has no saved state {manifest.state!r}; it cannot be resumed")
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
            return tensors, json.loads(meta["memrope_state"])
        except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as e:
            raise SessionError(f"{path} is not a readable memrope state ({e})") from None

    def checkpoint(self, manifest: Manifest, tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
        """New state file, then the manifest naming it (the commit point), then drop older states."""
        name = f"state_{manifest.chunks_done:06d}.safetensors"
        self.save_state(name, tensors, data)
        manifest.state = name
        atomic_write_json(self.path / MANIFEST, manifest.to_json())
        self._remove_states(except_name=name)

    def assemble(self, manifest: Manifest, out: Path) -> int:
        """Remux the finished segments into ``out`` (atomic); returns the frame count."""
        tmp = out.with_name(out.name + ".tmp.mp4")
        frames = 0
        with av.open(str(tmp), mode="w", format="mp4") as dst:
            stream, offset = None, 0
            for seg in manifest.segments:
                with av.open(str(self.segment_path(seg.name))) as src:
                    in_stream = src.streams.video[0]
                    if stream is None:
                        stream = dst.add_stream_from_template(in_stream)
                    last = 0
                    for packet in src.demux(in_stream):
                        if packet.dts is None:
                            continue
                        packet.pts += offset
                        packet.dts += offset
                        last = max(last, packet.pts + (packet.duration or 0))
                        packet.stream = stream
                        dst.mux(packet)
                    offset = last
                frames += seg.frames
        os.replace(tmp, out)
        return frames
