"""Per-chunk records on disk, never in memory: an append-only JSON Lines log and a bounded summary.

A run of unbounded length must not hold one record per chunk (an hour of the embedded model is
19,200 chunks; a live stream has no end). Each chunk's record is appended to a JSON Lines file and
flushed at once; the summary (count, totals, first chunk, peaks, median and p90 latency) is kept by
:class:`RunSummary` in memory that does not grow with the run.

A log's committed prefix is a :class:`LogMark`: its length in bytes and lines and a hash chain over
its lines (``sha256(previous + line)``, so the chain costs one hash per line to extend and a manifest
can record it in constant size). A run directory's manifest stores the mark of each log at every
checkpoint; on resume the log is checked against the mark and cut back to it, discarding lines written
after the last checkpoint. :class:`StatsFile` writes ``--stats`` as one JSON document, streamed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ddsketch import LogCollapsingLowestDenseDDSketch

GENESIS = "0" * 64  # chain value of an empty log
QUANTILE_ACCURACY = 1e-3  # relative accuracy of the summary's median and p90 latency
SKETCH_BINS = 2048  # bound on the sketch's buckets: ~2048 x 0.2% = 4 orders of magnitude at full accuracy


class LogError(ValueError):
    """A log that does not match its recorded mark (edited, truncated, foreign)."""


@dataclass(frozen=True)
class LogMark:
    bytes: int = 0
    lines: int = 0
    sha256: str = GENESIS

    @classmethod
    def parse(cls, data: Any, source: str) -> LogMark:
        if not isinstance(data, dict) or set(data) != {"bytes", "lines", "sha256"}:
            raise LogError(f"{source}: log mark malformed: {data!r}")
        for key in ("bytes", "lines"):
            if not isinstance(data[key], int) or isinstance(data[key], bool) or data[key] < 0:
                raise LogError(f"{source}: log mark '{key}' must be a non-negative integer")
        if not isinstance(data["sha256"], str) or len(data["sha256"]) != 64:
            raise LogError(f"{source}: log mark 'sha256' must be 64 hex digits")
        return cls(data["bytes"], data["lines"], data["sha256"])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _link(chain: str, line: bytes) -> str:
    return hashlib.sha256(chain.encode("ascii") + line).hexdigest()


def encode_record(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), default=str).encode("utf-8") + b"\n"


class JsonLinesLog:
    """Append-only JSON Lines file; ``mark()`` is what has been appended so far."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = None
        self._mark = LogMark()

    def create(self) -> JsonLinesLog:
        """Start an empty log (replacing any file of that name)."""
        self._file = open(self.path, "wb")
        self._mark = LogMark()
        return self

    def resume(self, mark: LogMark) -> JsonLinesLog:
        """Check the file against ``mark``, cut it back to it and reopen it for appending."""
        check_prefix(self.path, mark)
        with open(self.path, "rb+") as f:
            f.truncate(mark.bytes)
            f.flush()
            os.fsync(f.fileno())
        self._file = open(self.path, "ab")
        self._mark = mark
        return self

    def append(self, record: dict[str, Any]) -> None:
        line = encode_record(record)
        self._file.write(line)
        self._file.flush()  # readable at once by another process (progress monitors, a crash)
        self._mark = LogMark(self._mark.bytes + len(line), self._mark.lines + 1, _link(self._mark.sha256, line))

    def sync(self) -> LogMark:
        """Everything appended is on disk; returns the mark to commit."""
        self._file.flush()
        os.fsync(self._file.fileno())
        return self._mark

    def mark(self) -> LogMark:
        return self._mark

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def check_prefix(path: Path, mark: LogMark) -> None:
    """The first ``mark.bytes`` of ``path`` are ``mark.lines`` whole lines whose chain is ``mark.sha256``."""
    if not path.is_file():
        raise LogError(f"{path} is missing")
    if path.stat().st_size < mark.bytes:
        raise LogError(f"{path} is shorter ({path.stat().st_size} bytes) than its checkpoint recorded "
                       f"({mark.bytes} bytes)")
    chain, lines, seen = GENESIS, 0, 0
    with open(path, "rb") as f:
        while seen < mark.bytes:
            line = f.readline()
            seen += len(line)
            if seen > mark.bytes or not line.endswith(b"\n"):
                raise LogError(f"{path}: the recorded length {mark.bytes} does not end at a line")
            chain, lines = _link(chain, line), lines + 1
    if (lines, chain) != (mark.lines, mark.sha256):
        raise LogError(f"{path} does not match its checkpoint (edited or foreign: {lines} lines, "
                       f"{mark.lines} recorded, checksums differ)" if lines == mark.lines else
                       f"{path} holds {lines} lines where its checkpoint recorded {mark.lines}")


def read_records(path: Path, mark: LogMark | None = None) -> Iterator[dict[str, Any]]:
    """The records of a log (up to ``mark``), one at a time."""
    limit = mark.bytes if mark is not None else None
    with open(path, "rb") as f:
        seen = 0
        for line in f:
            seen += len(line)
            if limit is not None and seen > limit:
                return
            yield json.loads(line)


def copy_records(path: Path, out, mark: LogMark | None = None) -> None:
    """Write the log's records into ``out`` as the items of a JSON list (streamed, constant memory)."""
    limit = mark.bytes if mark is not None else None
    with open(path, "rb") as f:
        seen, first = 0, True
        for line in f:
            seen += len(line)
            if limit is not None and seen > limit:
                break
            out.write(("" if first else ",\n") + line.decode("utf-8").rstrip("\n"))
            first = False


class RunSummary:
    """What a run's summary says, accumulated chunk by chunk in bounded memory.

    Latency quantiles come from a DDSketch (relative accuracy ``QUANTILE_ACCURACY``, at most
    ``SKETCH_BINS`` buckets); everything else is exact. ``warmup`` chunks are left out of the
    steady-state latency (unless the run has no others).
    """

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.chunks = self.latent_frames = self.video_frames = 0
        self.first_chunk_ms: float | None = None
        self.cache_bytes_max = self.cache_bytes_final = self.max_frame_pos = 0
        self._steady = LogCollapsingLowestDenseDDSketch(QUANTILE_ACCURACY, bin_limit=SKETCH_BINS)
        self._early = LogCollapsingLowestDenseDDSketch(QUANTILE_ACCURACY, bin_limit=SKETCH_BINS)
        self._checkpoints = LogCollapsingLowestDenseDDSketch(QUANTILE_ACCURACY, bin_limit=SKETCH_BINS)

    def add(self, stats: dict[str, Any]) -> None:
        if self.chunks == 0:
            self.first_chunk_ms = stats["ms"]
        (self._early if self.chunks < self.warmup else self._steady).add(max(stats["ms"], 1e-9))
        self.chunks += 1
        self.latent_frames += stats["latent_frames"]
        self.video_frames += stats.get("video_frames") or 0
        self.cache_bytes_max = max(self.cache_bytes_max, stats["cache_bytes"])
        self.cache_bytes_final = stats["cache_bytes"]
        self.max_frame_pos = max(self.max_frame_pos, stats["max_frame_pos"])

    def add_checkpoint(self, ms: float) -> None:
        """One checkpoint of this session took ``ms`` (segment closed, logs synced, state and manifest written)."""
        self._checkpoints.add(max(ms, 1e-9))

    def latency(self, q: float) -> float | None:
        sketch = self._steady if self._steady.count else self._early
        return None if not sketch.count else round(sketch.get_quantile_value(q), 3)

    def to_json(self, seconds: float, peak_rss_mb: float) -> dict[str, Any]:
        return {
            "chunks": self.chunks,
            "latent_frames": self.latent_frames,
            "video_frames": self.video_frames,
            "seconds": round(seconds, 3),
            "first_chunk_ms": self.first_chunk_ms,
            "steady_median_ms": self.latency(0.5),
            "steady_p90_ms": self.latency(0.9),
            "quantile_relative_accuracy": QUANTILE_ACCURACY,
            "cache_bytes_max": self.cache_bytes_max,
            "cache_bytes_final": self.cache_bytes_final,
            "max_frame_pos": self.max_frame_pos,
            "peak_rss_mb": round(peak_rss_mb, 1),
            "checkpoints_this_session": int(self._checkpoints.count),
            "checkpoint_median_ms": _quantile(self._checkpoints, 0.5),
            "checkpoint_p90_ms": _quantile(self._checkpoints, 0.9),
        }


def _quantile(sketch, q: float) -> float | None:
    return round(sketch.get_quantile_value(q), 3) if sketch.count else None


class StatsFile:
    """``--stats FILE``: one JSON document ``{..., "chunks": [...], "summary": {...}}``, written as a stream
    (chunks are never held), to ``FILE.tmp`` renamed into place when the summary is known."""

    def __init__(self, path: Path, header: dict[str, Any]):
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.file = open(self.tmp, "w", encoding="utf-8")
        head = json.dumps(header, indent=1, default=str)
        self.file.write(head[:-1].rstrip() + ',\n "chunks": [\n')
        self.first = True

    def chunk(self, stats: dict[str, Any]) -> None:
        self.file.write(("" if self.first else ",\n") + json.dumps(stats, separators=(",", ":"), default=str))
        self.first = False
        self.file.flush()

    def copy_log(self, log: Path, mark) -> None:
        copy_records(log, self.file, mark)
        self.first = self.first and mark.lines == 0

    def finish(self, summary: dict[str, Any]) -> None:
        self.file.write('\n ],\n "summary": ' + json.dumps(summary) + "\n}\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
