"""Synthetic long videos evaluate with flat memory (slow: minutes on 2 cores): 10 minutes at 832x480
and one hour at 256x144, every metric included.

Run as a test (`pytest -m slow tests/eval/test_long_video_memory.py`) or as a script to print the
numbers: `python tests/eval/test_long_video_memory.py [--minutes 10] [--keep DIR] [--networks]`.
Peak RSS is sampled with psutil in a background thread while the evaluation runs; memory is "flat"
when evaluating the whole video peaks within a small margin of evaluating its first tenth.

The network metrics (VBench's imaging quality, dynamic degree, motion smoothness, overall
consistency, subject and background consistency, aesthetic quality) run through their real metric
classes, with their per-video state, preprocessing and clip buffers, on stub networks of negligible
cost: real RAFT / AMT-S / MUSIQ / ViCLIP cost hours per video minute on this CPU
(`python -m memrope.eval.network_cost`), and what could grow with length is the metrics' state, not
the networks' (which is per call).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import psutil
import pytest
import torch
from torch import nn

from memrope.eval.analysis import analyze_video
from memrope.eval.config import EvalConfig
from memrope.eval.vbench import (
    BACKGROUND_ANCHOR,
    BACKGROUND_CONSISTENCY,
    SUBJECT_ANCHOR,
    SUBJECT_CONSISTENCY,
    AestheticMetric,
    ConsistencyMetric,
    clip_encoder,
)
from memrope.eval.vbench_motion import DynamicDegreeMetric, MotionSmoothnessMetric
from memrope.eval.vbench_quality import ImagingQualityMetric, OverallConsistencyMetric, constant_text

WIDTH, HEIGHT, FPS = 832, 480, 16
HOUR_WIDTH, HOUR_HEIGHT = 256, 144
# Evaluating 10x more video may cost at most this much more peak memory (per-frame floats, thumbnails).
FLAT_MEMORY_MARGIN_MB = 64


class StubNet(nn.Module):
    """A network stand-in: one parameter (metrics read its device), a cheap forward of the right shape."""

    def __init__(self, fn, context_length: int = 32) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.fn = fn
        self.cfg = type("cfg", (), {"context_length": context_length})()

    def forward(self, *args):
        return self.fn(*args)

    def encode_vision(self, frames):  # ViCLIP: (1, T, 3, H, W) -> (1, 3)
        return frames.mean((1, 3, 4))

    def encode_text(self, ids):
        return torch.ones(1, 3)


class StubClip(nn.Module):
    """transformers' CLIP vision interface: pixel_values -> an object with image_embeds (mean colour)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, pixel_values):
        return SimpleNamespace(image_embeds=pixel_values.mean((2, 3)))


def stub_network_metrics(fps: float, batch: int = 16) -> list:
    """Every network metric's real class on stub networks (see the module docstring)."""

    def colour(frames):
        return torch.from_numpy(np.stack([f.reshape(-1, 3).mean(0) for f in frames])).float()

    return [
        ImagingQualityMetric(StubNet(lambda x: x.mean((1, 2, 3)) * 100), fps, batch),
        DynamicDegreeMetric(StubNet(lambda a, b: (b - a)[:, :2]), fps),
        MotionSmoothnessMetric(StubNet(lambda a, b, t: (a + b) / 2)),
        OverallConsistencyMetric(StubNet(None), lambda text, n: torch.zeros(1, n, dtype=torch.long),
                                 constant_text("a red square"), fps),
        ConsistencyMetric(SUBJECT_CONSISTENCY, SUBJECT_ANCHOR, colour, batch),
        ConsistencyMetric(BACKGROUND_CONSISTENCY, BACKGROUND_ANCHOR, clip_encoder(StubClip()), batch),
        AestheticMetric(StubClip(), nn.Linear(3, 1), batch),
    ]


def write_long_video(path: Path, minutes: float, width: int = WIDTH, height: int = HEIGHT) -> Path:
    """Panning textured scene with a moving square, H.264 ultrafast (about real-time x10 on 2 cores)."""
    rng = np.random.default_rng(0)
    tex = rng.integers(0, 256, size=(height // 8, 2 * width // 8, 3), dtype=np.uint8)
    tex = np.repeat(np.repeat(tex, 8, axis=0), 8, axis=1)  # 8x8 blocks: structure for the flow
    n = int(minutes * 60 * FPS)
    side = max(8, height // 8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        for t in range(n):
            frame = np.roll(tex, -2 * t, axis=1)[:, :width].copy()
            y = (t * 3) % (height - side)
            frame[y : y + side, side : 2 * side] = (255, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class PeakRss:
    """Samples this process's RSS every `interval` seconds until stopped; keeps the peak."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._proc = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure(video: Path, seconds: float | None, networks: bool = False) -> tuple[float, float, float]:
    """(peak RSS MB, elapsed s, seconds of video evaluated)."""
    features = stub_network_metrics(FPS) if networks else ()
    with PeakRss() as rss:
        a = analyze_video(video, EvalConfig(max_seconds=seconds), features=features)
    if networks:
        assert {"imaging_quality", "dynamic_degree", "motion_smoothness", "overall_consistency",
                "subject_consistency", "aesthetic_quality"} <= set(a.whole)
    return rss.peak / 2**20, a.elapsed_s, a.seconds_evaluated


@pytest.mark.slow
def test_ten_minute_video_has_flat_memory(tmp_path: Path) -> None:
    video = write_long_video(tmp_path / "long.mp4", minutes=10)
    peak_1, _, _ = measure(video, 60.0, networks=True)
    peak_10, elapsed, seconds = measure(video, None, networks=True)
    assert seconds == pytest.approx(600.0, abs=0.1)
    assert peak_10 - peak_1 < FLAT_MEMORY_MARGIN_MB, (peak_1, peak_10)
    print(f"peak RSS 1 min {peak_1:.0f} MB, 10 min {peak_10:.0f} MB; {elapsed / 10:.1f} s per video minute")


def repetition_storage_mb(seconds: float, segment_seconds: float = 2.0) -> float:
    """What the weight-free repetition metric keeps by design: every thumbnail (32x18 float32 at 2 fps,
    in an array doubled as it grows) and the segment x segment similarity map (float64, built from a
    sum matrix: two at once). O(frames) and O(segments^2): one hour is 1800 segments, 26 MB a map."""
    frames = seconds * 2.0
    capacity = 256 * 2 ** int(np.ceil(np.log2(max(frames, 256) / 256)))
    segments = seconds / segment_seconds
    return (capacity * 32 * 18 * 4 + 2 * segments**2 * 8) / 2**20


@pytest.mark.slow
def test_hour_long_video_has_flat_memory_with_every_metric(tmp_path: Path) -> None:
    """Growth over the hour beyond the repetition metric's by-design storage stays within the margin
    (measured: 521 MB after 6 min, 601 MB after 60 min, with 65 MB of repetition storage)."""
    video = write_long_video(tmp_path / "hour.mp4", minutes=60, width=HOUR_WIDTH, height=HOUR_HEIGHT)
    peak_6, _, _ = measure(video, 360.0, networks=True)
    peak_60, elapsed, seconds = measure(video, None, networks=True)
    assert seconds == pytest.approx(3600.0, abs=0.1)
    by_design = repetition_storage_mb(3600.0) - repetition_storage_mb(360.0)
    assert peak_60 - peak_6 < FLAT_MEMORY_MARGIN_MB + by_design, (peak_6, peak_60, by_design)
    print(f"peak RSS 6 min {peak_6:.0f} MB, 60 min {peak_60:.0f} MB (repetition storage {by_design:.0f} MB); "
          f"{elapsed / 60:.1f} s per video minute")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--keep", type=Path, default=None, help="folder to keep the synthetic video in")
    parser.add_argument("--width", type=int, default=WIDTH)
    parser.add_argument("--height", type=int, default=HEIGHT)
    parser.add_argument("--networks", action="store_true", help="add every network metric (stub networks)")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp())
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / f"synthetic_{args.minutes:g}min_{args.width}x{args.height}.mp4"
    if not video.exists():
        t0 = time.perf_counter()
        write_long_video(video, args.minutes, args.width, args.height)
        print(f"wrote {video} in {time.perf_counter() - t0:.1f} s")
    tenth = args.minutes * 6.0
    p1, e1, s1 = measure(video, tenth, args.networks)
    print(f"first tenth: peak RSS {p1:.0f} MB, {e1:.1f} s for {s1:.1f} s of video")
    pn, en, sn = measure(video, None, args.networks)
    print(
        f"whole video: peak RSS {pn:.0f} MB, {en:.1f} s for {sn:.1f} s of video, "
        f"{en / (sn / 60):.2f} s per video minute"
    )
