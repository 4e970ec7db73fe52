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

from .conftest import FPS, panning
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
