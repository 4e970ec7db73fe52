"""The HTML report renders in a real browser (headless Chromium; skipped where none is installed)."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from memrope.video import VideoWriter

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "screenshot_report.sh"


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_report_screenshot_shows_tables_and_plots(tmp_path):
    from PIL import Image

    from memrope.eval.evaluate import evaluate_videos

    videos = []
    for name, speed in (("slow", 1), ("fast", 3)):
        path = tmp_path / f"{name}.mp4"
        with VideoWriter(path) as writer:
            for t in range(64):
                frame = np.zeros((64, 64, 3), dtype=np.uint8)
                x = (t * speed) % 48
                frame[20:36, x:x + 16] = (220, 60, 40)
                writer.write(frame[None])
        videos.append(path)
    evaluate_videos(videos, tmp_path / "report", labels=["slow", "fast"])
    png = tmp_path / "shot.png"
    subprocess.run(["bash", str(SCRIPT), str(tmp_path / "report" / "report.html"), str(png), "1200", "1600"],
                   check=True, timeout=120)
    image = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    assert image.shape == (1600, 1200)
    assert image.std() > 10  # text, tables and plots, not a blank page
    assert (image < 100).mean() > 0.005  # dark text is present
