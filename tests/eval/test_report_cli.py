"""End to end: evaluate labelled videos, write metrics.json / CSV / plots / HTML, and the CLI."""

from __future__ import annotations

import argparse
import base64
import csv
import json
import re

import numpy as np
import pytest

from memrope.eval.cli import add_eval_parser
from memrope.eval.config import EvalConfig
from memrope.eval.evaluate import evaluate_videos

from .conftest import FPS, HEIGHT, WIDTH, panning, texture
from .test_vbench_networks import tiny_vit

CONFIG = EvalConfig(segment_seconds=1.0, repetition_min_lag_seconds=1.0, feature_fps=4.0)


@pytest.fixture
def two_methods_two_prompts(video):
    """Method 'moving' pans at 3 px/frame, 'frozen' stops after one second; two prompts (seeds) each."""
    paths, labels, prompts = [], [], []
    for prompt in ("p0", "p1"):
        seed = int(prompt[1])
        moving = list(panning(3 * FPS, speed=3, seed=seed))
        frozen = moving[:FPS] + [moving[FPS - 1]] * (2 * FPS)
        for method, frames in (("moving", moving), ("frozen", frozen)):
            paths.append(video(f"{method}_{prompt}", frames))
            labels.append(method)
            prompts.append(prompt)
    return paths, labels, prompts


def test_evaluate_videos_writes_every_output(tmp_path, two_methods_two_prompts):
    paths, labels, prompts = two_methods_two_prompts
    weights = tmp_path / "weights"
    tiny_vit().save_pretrained(weights / "dino-vitb16")
    out = tmp_path / "report"
    ev = evaluate_videos(paths, out, weights_dir=weights, labels=labels, prompts=prompts, config=CONFIG)

    data = json.loads((out / "metrics.json").read_text())
    assert data["versions"]["numpy"] and data["versions"]["av"]
    assert data["metrics"]["temporal_flickering"]["implementation"].startswith("vbench-formula")
    assert all(spec["implementation"] for spec in data["metrics"].values())
    assert "subject_consistency" in data["metrics"] and "aesthetic_quality" in data["skipped"]
    sha = data["networks"]["dino_vitb16"]["sha256"]
    assert sha and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in sha.values())
    assert len(data["videos"]) == 4 and data["videos"][0]["drift"]["motion_magnitude"]["n_segments"] == 3

    # paired comparison over the two prompts: the moving method has more motion on both
    comp = data["comparisons"]["dynamic_degree_dis"][0]
    assert (comp["a"], comp["b"]) == ("moving", "frozen")
    assert comp["difference"]["mean"] == pytest.approx(2 / 3)
    est = ev.summary["moving"]["dynamic_degree_dis"]
    assert est.low <= est.mean <= est.high and est.n == 2

    with open(out / "segments.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 3
    frozen_rows = [r for r in rows if r["method"] == "frozen"]
    assert [float(r["dynamic_degree_dis"]) for r in frozen_rows[:3]] == [1.0, 0.0, 0.0]
    assert "subject_consistency" in rows[0]

    html = (out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 3 + 2 * 4  # three shared plots, heatmap and thumbnail strip per video
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert "<script" not in html and "http" not in html.replace("http-equiv", "")  # self-contained
    assert (out / "plots" / "metrics_over_time.png").stat().st_size > 1000


def test_drift_thresholds_apply_per_metric(video):
    moving = list(panning(3 * FPS, speed=3))
    ev = evaluate_videos([video("m", moving)], None, config=CONFIG, thresholds={"motion_magnitude": 10.0})
    d = ev.videos[0].drift["motion_magnitude"]
    assert d.threshold == 10.0 and d.time_to_threshold_s is None  # never reaches 10 px/frame
    assert d.first == pytest.approx(3.0, rel=0.1)


def test_mismatched_labels_are_rejected(video):
    p = video("m", panning(FPS))
    with pytest.raises(ValueError, match="labels"):
        evaluate_videos([p], None, labels=["a", "b"])
    with pytest.raises(ValueError, match="no videos"):
        evaluate_videos([], None)


def test_cli_subcommand_registers_and_runs(tmp_path, video, capsys):
    p = video("clip", panning(2 * FPS))
    parser = argparse.ArgumentParser(prog="memrope")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            "eval",
            str(p),
            "--out",
            str(tmp_path / "o"),
            "--segment-seconds",
            "0.5",
            "--no-progress",
            "--weights-dir",
            str(tmp_path / "none"),
        ]
    )
    assert args.func(args) == 0
    data = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert data["config"]["segment_seconds"] == 0.5 and len(data["videos"][0]["segments"]["start_s"]) == 4
    assert "skipped subject_consistency" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # refused by the parser: one line, exit 2
        parser.parse_args(["eval", str(p), "--out", str(tmp_path / "o"), "--segment-seconds", "-1"])
    assert np.isfinite(data["videos"][0]["whole"]["temporal_flickering"])


def test_weight_free_metrics_run_without_transformers(video, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "memrope.eval.vbench", None)  # import now raises ImportError
    ev = evaluate_videos([video("m", panning(FPS))], None, config=CONFIG)
    assert "transformers" in ev.skipped["subject_consistency"]
    assert np.isfinite(ev.videos[0].analysis.whole["temporal_flickering"])


def test_the_tables_hold_the_known_answers_of_still_flickering_panning_and_drifting_videos(tmp_path, video):
    """Four videos whose every cell is known, through ``evaluate_videos`` and its written tables:
    a still texture (flicker 1, no motion), a uniform grey alternating 100 / 140 (flicker exactly
    (255 - 40) / 255 in every segment), a pan at 3 px a frame (every segment dynamic, motion 3 px),
    and a red channel that steps 40 -> 100 -> 160 one second at a time (each segment's mean red, and a
    drift of 60 / 255 a second: first, last, change, least-squares slope per minute)."""
    n = 3 * FPS
    grey = lambda v: np.full((HEIGHT, WIDTH, 3), v, np.uint8)  # noqa: E731
    steps = []
    for i in range(n):
        f = grey(100)
        f[..., 0] = 40 + 60 * (i // FPS)
        steps.append(f)
    videos = {"still": [texture(HEIGHT, WIDTH, seed=3)] * n, "flicker": [grey(100 if i % 2 == 0 else 140)
                                                                         for i in range(n)],
              "pan": list(panning(n, speed=3)), "drift": steps}
    paths = [video(name, frames) for name, frames in videos.items()]
    evaluate_videos(paths, tmp_path / "r", labels=list(videos), config=CONFIG, weights_dir=tmp_path / "none")
    with open(tmp_path / "r" / "segments.csv") as f:
        rows = list(csv.DictReader(f))
    col = lambda label, metric: [float(r[metric]) for r in rows if r["label"] == label]  # noqa: E731
    assert all(len(col(label, "temporal_flickering")) == 3 for label in videos)
    assert col("still", "temporal_flickering") == pytest.approx([1.0] * 3, abs=1e-6)
    assert col("still", "dynamic_degree_dis") == [0.0] * 3 and max(col("still", "motion_magnitude")) < 0.05
    assert col("flicker", "temporal_flickering") == pytest.approx([(255 - 40) / 255] * 3, abs=1e-6)
    assert col("pan", "dynamic_degree_dis") == [1.0] * 3
    assert col("pan", "motion_magnitude") == pytest.approx([3.0] * 3, rel=0.1)
    codec = 1.5 / 255  # lossless H.264 is lossless in YUV: a colour's RGB comes back within a level
    assert col("drift", "mean_red") == pytest.approx([40 / 255, 100 / 255, 160 / 255], abs=codec)
    assert col("drift", "mean_green") == pytest.approx([100 / 255] * 3, abs=codec)
    data = json.loads((tmp_path / "r" / "metrics.json").read_text())
    drift = next(v for v in data["videos"] if v["label"] == "drift")["drift"]["mean_red"]
    measured = col("drift", "mean_red")
    assert drift["first"] == pytest.approx(measured[0], abs=1e-6)  # the CSV keeps 6 decimals
    assert drift["last"] == pytest.approx(measured[-1], abs=1e-6)
    assert drift["change"] == pytest.approx(measured[-1] - measured[0], abs=2e-6)
    assert drift["change"] == pytest.approx(120 / 255, abs=2 * codec)
    # least squares over segment starts 0, 1, 2 s: (m2 - m0) / 2 per second
    assert drift["slope_per_minute"] == pytest.approx(60 * (measured[2] - measured[0]) / 2, abs=1e-4)
    assert drift["slope_per_minute"] == pytest.approx(60 * 60 / 255, abs=60 * codec)
    with open(tmp_path / "r" / "whole.csv") as f:
        whole = {r["label"]: r for r in csv.DictReader(f)}
    assert float(whole["flicker"]["temporal_flickering"]) == pytest.approx((255 - 40) / 255, abs=1e-6)
    assert float(whole["still"]["temporal_flickering"]) == pytest.approx(1.0, abs=1e-6)
