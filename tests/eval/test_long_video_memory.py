"""A synthetic 10-minute 832x480 video evaluates with flat memory (slow: minutes on 2 cores).

Run as a test (`pytest -m slow tests/eval/test_long_video_memory.py`) or as a script to print the
numbers: `python tests/eval/test_long_video_memory.py [--minutes 10] [--keep DIR]`.
Peak RSS is sampled with psutil in a background thread while the evaluation runs; memory is "flat"
when evaluating 10 minutes peaks within a small margin of evaluating the first minute.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import av
import numpy as np
import psutil
import pytest

from memrope.eval.analysis import analyze_video
from memrope.eval.config import EvalConfig

WIDTH, HEIGHT, FPS = 832, 480, 16
# Evaluating 10x more video may cost at most this much more peak memory (per-frame floats, thumbnails).
FLAT_MEMORY_MARGIN_MB = 64


def write_long_video(path: Path, minutes: float) -> Path:
    """Panning textured scene with a moving square, H.264 ultrafast (about real-time x10 on 2 cores)."""
    rng = np.random.default_rng(0)
    tex = rng.integers(0, 256, size=(HEIGHT // 8, 2 * WIDTH // 8, 3), dtype=np.uint8)
    tex = np.repeat(np.repeat(tex, 8, axis=0), 8, axis=1)  # 8x8 blocks: structure for the flow
    n = int(minutes * 60 * FPS)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        for t in range(n):
            frame = np.roll(tex, -2 * t, axis=1)[:, :WIDTH].copy()
            y = (t * 3) % (HEIGHT - 64)
            frame[y : y + 64, 100:164] = (255, 40, 40)
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


def measure(video: Path, seconds: float | None) -> tuple[float, float, float]:
    """(peak RSS MB, elapsed s, seconds of video evaluated)."""
    with PeakRss() as rss:
        a = analyze_video(video, EvalConfig(max_seconds=seconds))
    return rss.peak / 2**20, a.elapsed_s, a.seconds_evaluated


@pytest.mark.slow
def test_ten_minute_video_has_flat_memory(tmp_path: Path) -> None:
    video = write_long_video(tmp_path / "long.mp4", minutes=10)
    peak_1, _, _ = measure(video, 60.0)
    peak_10, elapsed, seconds = measure(video, None)
    assert seconds == pytest.approx(600.0, abs=0.1)
    assert peak_10 - peak_1 < FLAT_MEMORY_MARGIN_MB, (peak_1, peak_10)
    print(f"peak RSS 1 min {peak_1:.0f} MB, 10 min {peak_10:.0f} MB; {elapsed / 10:.1f} s per video minute")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--keep", type=Path, default=None, help="folder to keep the synthetic video in")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp())
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / f"synthetic_{args.minutes:g}min_{WIDTH}x{HEIGHT}.mp4"
    if not video.exists():
        t0 = time.perf_counter()
        write_long_video(video, args.minutes)
        print(f"wrote {video} in {time.perf_counter() - t0:.1f} s")
    p1, e1, s1 = measure(video, 60.0)
    print(f"first minute: peak RSS {p1:.0f} MB, {e1:.1f} s for {s1:.1f} s of video")
    pn, en, sn = measure(video, None)
    print(
        f"whole video: peak RSS {pn:.0f} MB, {en:.1f} s for {sn:.1f} s of video, "
        f"{en / (sn / 60):.2f} s per video minute"
    )
