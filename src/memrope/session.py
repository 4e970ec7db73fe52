"""Resumable runs: a run directory with video segments, append-only logs, a manifest and the state.

Layout of a run directory (manifest version 2)::

    manifest.json             settings, the current state file, counts, log marks, checksums: constant size
    segments.jsonl            one line per finished segment (append-only)
    chunks.jsonl              one line of statistics per chunk (append-only, flushed per chunk)
    segments/seg_000000.mp4   one video file per checkpoint interval (.mkv with --lossless)
    segments/seg_000000.latents.safetensors   (with --save-latents) the clean latents
    state_000040.safetensors  the generator's state after chunk 40, named by the manifest

Nothing grows in memory or per checkpoint with the length of the run: a checkpoint appends one
line to ``segments.jsonl``, syncs the logs, writes a new state file and then the manifest that
names it and records each log's mark (length, line count, hash chain: :mod:`memrope.chunk_log`) -
each file to a temporary name renamed into place - and only then removes the older state. The
manifest is the single commit point: whatever moment a crash hits, it names finished segments, log
prefixes and a state file that exist and match each other. Anything written after the last
checkpoint (a half segment, log lines) is discarded on resume and produced again, identically.
The final video is the segments remuxed (no re-encoding) into one file.

Confinement: every path a manifest leads to is a fixed name or a name of a fixed pattern inside the
run directory, resolved (symlinks followed) and refused unless it stays inside; absolute names and
``..`` never match. The manifest names no destination outside the directory: where the finished
video and statistics go is the command line's choice (:mod:`memrope.run`), never the manifest's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import av
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .chunk_log import JsonLinesLog, LogError, LogMark, check_prefix, read_records

MANIFEST = "manifest.json"
SEGMENTS = "segments"
SEGMENTS_LOG = "segments.jsonl"
CHUNKS_LOG = "chunks.jsonl"
MANIFEST_VERSION = 2
LEGACY_VERSION = 1  # kept every chunk's statistics and every segment in the manifest; migrated on resume
STATE_NAME = re.compile(r"^state_\d{6,}\.safetensors$")
SEGMENT_NAME = re.compile(r"^seg_(\d{6,})\.(mp4|mkv)$")
CONTAINER_FORMATS = {".mp4": "mp4", ".mkv": "matroska"}
HASH_BLOCK = 1 << 20


class SessionError(ValueError):
    """A run directory that cannot be used (missing, foreign, inconsistent, pointing outside itself)."""


def inside(root: Path, name: str) -> Path:
    """``root / name``, refused unless it provably stays inside ``root``.

    ``name`` must be relative, without ``..`` or empty parts; after resolving symlinks (of ``root``'s
    own entries too: a ``segments`` link to elsewhere is refused) it must still lie under ``root``.
    """
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        raise SessionError(f"{name!r} is not a file name inside the run directory")
    pure = PurePosixPath(name)
    if pure.is_absolute() or any(part in ("..", ".", "") for part in name.split("/")):
        raise SessionError(f"{name!r} leads outside the run directory")
    base = Path(root).resolve()
    target = base / pure
    if not target.resolve().is_relative_to(base):
        raise SessionError(f"{name!r} is a link that leads outside the run directory {root}")
    return target


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, json.dumps(payload, indent=1).encode("utf-8"))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _count(data: dict, key: str, source: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SessionError(f"{source}: '{key}' missing or not a non-negative integer")
    return value


@dataclass
class Segment:
    name: str  # file name inside segments/
    first_chunk: int
    chunks: int
    frames: int

    @classmethod
    def parse(cls, item: Any) -> Segment:
        if not isinstance(item, dict) or set(item) != {"name", "first_chunk", "chunks", "frames"}:
            raise SessionError(f"segment entry malformed: {item!r}")
        name = item["name"]
        if not isinstance(name, str) or not SEGMENT_NAME.match(name):
            raise SessionError(f"a segment entry names a file outside the run directory or of a foreign name: "
                               f"{name!r}")
        for key in ("first_chunk", "chunks", "frames"):
            if not isinstance(item[key], int) or isinstance(item[key], bool) or item[key] < 0:
                raise SessionError(f"segment {name}: {key} must be a non-negative integer")
        if int(SEGMENT_NAME.match(name)[1]) != item["first_chunk"]:
            raise SessionError(f"segment {name} does not start at its named chunk {item['first_chunk']}")
        return cls(name, item["first_chunk"], item["chunks"], item["frames"])

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "first_chunk": self.first_chunk, "chunks": self.chunks, "frames": self.frames}


@dataclass
class Manifest:
    settings: dict[str, Any]  # the generate command's settings, to rebuild the run on resume
    settings_hash: str = ""  # generate_options.settings_hash(settings, length=False)
    chunks_done: int = 0
    segments: int = 0
    frames: int = 0
    complete: bool = False
    state: str | None = None  # state file written together with this manifest
    state_sha256: str | None = None
    segments_log: LogMark = field(default_factory=LogMark)
    chunks_log: LogMark = field(default_factory=LogMark)

    def to_json(self) -> dict[str, Any]:
        return {"version": MANIFEST_VERSION, "settings": self.settings, "settings_hash": self.settings_hash,
                "chunks_done": self.chunks_done, "segments": self.segments, "frames": self.frames,
                "complete": self.complete, "state": self.state, "state_sha256": self.state_sha256,
                "logs": {SEGMENTS_LOG: self.segments_log.to_json(), CHUNKS_LOG: self.chunks_log.to_json()}}

    @classmethod
    def from_json(cls, data: Any, source: str) -> Manifest:
        if isinstance(data, dict) and data.get("version") == LEGACY_VERSION:
            raise SessionError(f"{source} is a version {LEGACY_VERSION} manifest (an older memrope): "
                               f"`memrope generate --resume` converts it (run.open_run)")
        if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
            raise SessionError(f"{source} is not a memrope manifest (version {MANIFEST_VERSION})")
        if not isinstance(data.get("settings"), dict):
            raise SessionError(f"{source}: 'settings' missing or not a mapping")
        if not isinstance(data.get("settings_hash"), str):
            raise SessionError(f"{source}: 'settings_hash' missing")
        if not isinstance(data.get("complete"), bool):
            raise SessionError(f"{source}: 'complete' missing or not true/false")
        chunks, segments, frames = (_count(data, k, source) for k in ("chunks_done", "segments", "frames"))
        logs = data.get("logs")
        if not isinstance(logs, dict) or set(logs) != {SEGMENTS_LOG, CHUNKS_LOG}:
            raise SessionError(f"{source}: 'logs' must record {SEGMENTS_LOG} and {CHUNKS_LOG}")
        try:
            seg_mark, chunk_mark = (LogMark.parse(logs[k], source) for k in (SEGMENTS_LOG, CHUNKS_LOG))
        except LogError as e:
            raise SessionError(str(e)) from None
        if seg_mark.lines != segments or chunk_mark.lines != chunks:
            raise SessionError(f"{source}: its logs hold {seg_mark.lines} segments and {chunk_mark.lines} chunks "
                               f"but it says {segments} and {chunks}")
        state, state_sha = data.get("state"), data.get("state_sha256")
        if state is not None and (not isinstance(state, str) or not STATE_NAME.match(state)):
            raise SessionError(f"{source}: state file name {state!r} is outside the run directory or foreign")
        if (state is None) != (chunks == 0) or (state is None) != (state_sha is None):
            raise SessionError(f"{source}: {chunks} chunks done but state {state!r}")
        if state_sha is not None and (not isinstance(state_sha, str) or len(state_sha) != 64):
            raise SessionError(f"{source}: 'state_sha256' must be 64 hex digits")
        return cls(data["settings"], data["settings_hash"], chunks, segments, frames, data["complete"], state,
                   state_sha, seg_mark, chunk_mark)


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ----------------------------------------------------------------- confined paths
    def file(self, name: str) -> Path:
        return inside(self.path, name)

    @property
    def segments_dir(self) -> Path:
        return inside(self.path, SEGMENTS)

    def segment_path(self, name: str) -> Path:
        if not isinstance(name, str) or not SEGMENT_NAME.match(name):
            raise SessionError(f"segment name {name!r} is not allowed")
        return inside(self.path, f"{SEGMENTS}/{name}")

    def state_path(self, name: str) -> Path:
        if not isinstance(name, str) or not STATE_NAME.match(name):
            raise SessionError(f"state name {name!r} is not allowed")
        return inside(self.path, name)

    # ----------------------------------------------------------------- create / load
    def create(self, settings: dict[str, Any], settings_hash: str) -> tuple[Manifest, JsonLinesLog, JsonLinesLog]:
        if (self.path / MANIFEST).exists():
            raise SessionError(f"{self.path} already holds a run; continue it with --resume {self.path} "
                               f"or choose another --run-dir")
        self.path.mkdir(parents=True, exist_ok=True)
        self.segments_dir.mkdir(exist_ok=True)
        manifest = Manifest(settings, settings_hash)
        segments_log = JsonLinesLog(self.file(SEGMENTS_LOG)).create()
        chunks_log = JsonLinesLog(self.file(CHUNKS_LOG)).create()
        atomic_write_json(self.file(MANIFEST), manifest.to_json())
        return manifest, segments_log, chunks_log

    def read_manifest(self) -> Any:
        if not self.path.is_dir():
            raise SessionError(f"{self.path} is not a memrope run directory (no such folder)")
        path = self.file(MANIFEST)
        if not path.is_file():
            raise SessionError(f"{self.path} is not a memrope run directory (no {MANIFEST})")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SessionError(f"{path} is not valid JSON ({e})") from None
        except OSError as e:
            raise SessionError(f"{path} cannot be read ({e.strerror})") from None

    def load(self, data: Any | None = None) -> Manifest:
        """The manifest, checked against everything it names; reads only, changes nothing."""
        data = self.read_manifest() if data is None else data
        source = str(self.path / MANIFEST)
        manifest = Manifest.from_json(data, source)
        self.segments_dir  # noqa: B018 - refuses a segments/ link that leads elsewhere
        try:
            for mark, name in ((manifest.segments_log, SEGMENTS_LOG), (manifest.chunks_log, CHUNKS_LOG)):
                check_prefix(self.file(name), mark)
        except LogError as e:
            raise SessionError(str(e)) from None
        expected, frames = 0, 0
        for seg in self.segments(manifest):
            if seg.first_chunk != expected:
                raise SessionError(f"{source}: segments do not follow each other at chunk {expected}")
            if not self.segment_path(seg.name).is_file():
                raise SessionError(f"{source} names segment {seg.name}, which is missing")
            expected, frames = expected + seg.chunks, frames + seg.frames
        if (expected, frames) != (manifest.chunks_done, manifest.frames):
            raise SessionError(f"{source}: segments cover {expected} chunks and {frames} frames but the manifest "
                               f"says {manifest.chunks_done} and {manifest.frames}")
        if manifest.state is not None:
            path = self.state_path(manifest.state)
            if not path.is_file():
                raise SessionError(f"{self.path} has no saved state {manifest.state!r}; it cannot be resumed")
            if file_sha256(path) != manifest.state_sha256:
                raise SessionError(f"{path} does not match the checksum its manifest recorded (corrupted or "
                                   f"replaced); the run cannot be resumed")
        return manifest

    def segments(self, manifest: Manifest) -> Iterator[Segment]:
        """The finished segments, read from the log one at a time."""
        try:
            for record in read_records(self.file(SEGMENTS_LOG), manifest.segments_log):
                yield Segment.parse(record)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SessionError(f"{self.path / SEGMENTS_LOG} is not JSON Lines ({e})") from None

    def open_logs(self, manifest: Manifest) -> tuple[JsonLinesLog, JsonLinesLog]:
        """Cut both logs back to the manifest's marks (dropping lines written after the last checkpoint)."""
        return (JsonLinesLog(self.file(SEGMENTS_LOG)).resume(manifest.segments_log),
                JsonLinesLog(self.file(CHUNKS_LOG)).resume(manifest.chunks_log))

    def discard_unfinished(self, manifest: Manifest) -> None:
        """Remove files written after the last checkpoint: segments from chunk ``chunks_done`` on, and
        every state file but the one the manifest names."""
        for f in self.segments_dir.glob("seg_*"):
            match = re.match(r"^seg_(\d{6,})\.", f.name)
            if match and int(match[1]) >= manifest.chunks_done:
                f.unlink()
        self._remove_states(except_name=manifest.state)

    def _remove_states(self, except_name: str | None) -> None:
        for f in self.path.glob("state_*.safetensors*"):
            if f.name != except_name:
                f.unlink()

    # ----------------------------------------------------------------- state
    def save_state(self, name: str, tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> str:
        """Write the state file atomically; returns its SHA-256."""
        path = self.state_path(name)
        tmp = path.with_name(name + ".tmp")
        save_file({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, str(tmp),
                  metadata={"memrope_state": json.dumps(data)})
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        digest = file_sha256(tmp)
        os.replace(tmp, path)
        return digest

    def load_state(self, manifest: Manifest) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if manifest.state is None:
            raise SessionError(f"{self.path} has no saved state; it cannot be resumed")
        path = self.state_path(manifest.state)
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
            return tensors, json.loads(meta["memrope_state"])
        except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as e:
            raise SessionError(f"{path} is not a readable memrope state ({e})") from None

    def checkpoint(self, manifest: Manifest, segment: Segment, logs: tuple[JsonLinesLog, JsonLinesLog],
                   tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
        """Log the segment, sync the logs, write the new state, then the manifest naming it all (the
        commit point), then drop older states. Writes a constant amount besides the state."""
        segments_log, chunks_log = logs
        segments_log.append(segment.to_json())
        manifest.segments_log, manifest.chunks_log = segments_log.sync(), chunks_log.sync()
        manifest.segments += 1
        manifest.chunks_done += segment.chunks
        manifest.frames += segment.frames
        name = f"state_{manifest.chunks_done:06d}.safetensors"
        manifest.state_sha256 = self.save_state(name, tensors, data)
        manifest.state = name
        self.write_manifest(manifest)
        self._remove_states(except_name=name)

    def write_manifest(self, manifest: Manifest) -> None:
        atomic_write_json(self.file(MANIFEST), manifest.to_json())

    def assemble(self, manifest: Manifest, out: Path) -> int:
        """Remux the finished segments into ``out`` (atomic); returns the frame count."""
        tmp = out.with_name(out.name + ".tmp" + out.suffix)
        frames = 0
        with av.open(str(tmp), mode="w", format=CONTAINER_FORMATS[out.suffix.lower()]) as dst:
            stream, offset = None, 0
            for seg in self.segments(manifest):
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


def legacy_manifest(run: RunDirectory, data: dict[str, Any], migrate_settings) -> tuple[Manifest, list, list]:
    """A version-1 manifest (statistics and segments inside it) as a version-2 one, with the log lines
    to write; nothing is written here. ``migrate_settings`` maps the old settings to current ones."""
    source = str(run.path / MANIFEST)
    for key, kind in (("settings", dict), ("segments", list), ("chunks_done", int), ("complete", bool),
                      ("chunk_stats", list)):
        if not isinstance(data.get(key), kind):
            raise SessionError(f"{source}: '{key}' missing or not a {kind.__name__}")
    segments = [Segment.parse(s) for s in data["segments"]]
    if len(data["chunk_stats"]) != data["chunks_done"] or sum(s.chunks for s in segments) != data["chunks_done"]:
        raise SessionError(f"{source}: segments and statistics do not cover its {data['chunks_done']} chunks")
    state = data.get("state")
    if (state is None) != (data["chunks_done"] == 0):
        raise SessionError(f"{source}: {data['chunks_done']} chunks done but state {state!r}")
    if state is not None and not run.state_path(state).is_file():
        raise SessionError(f"{run.path} has no saved state {state!r}; it cannot be resumed")
    settings, settings_hash = migrate_settings(data["settings"])
    manifest = Manifest(settings, settings_hash, data["chunks_done"], len(segments), sum(s.frames for s in segments),
                        data["complete"], state, None if state is None else file_sha256(run.state_path(state)))
    return manifest, [s.to_json() for s in segments], data["chunk_stats"]


def write_migrated(run: RunDirectory, manifest: Manifest, segment_lines: list, chunk_lines: list) -> None:
    """Write the logs of a migrated version-1 run, then its version-2 manifest (the commit point)."""
    logs = (JsonLinesLog(run.file(SEGMENTS_LOG)).create(), JsonLinesLog(run.file(CHUNKS_LOG)).create())
    for log, lines in zip(logs, (segment_lines, chunk_lines), strict=True):
        for line in lines:
            log.append(line)
        mark = log.sync()
        log.close()
        if log is logs[0]:
            manifest.segments_log = mark
        else:
            manifest.chunks_log = mark
    run.write_manifest(manifest)
