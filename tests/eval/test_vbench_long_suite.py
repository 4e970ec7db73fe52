"""`memrope eval` with every VBench-Long network present in VBench's cache layout (RAFT and AMT-S at
their real sizes, MUSIQ and ViCLIP tiny) computes every dimension through the real loaders, reports
the papers' drift numbers, and lists a dimension as skipped with the reason when its files are
absent; `memrope weights check` says what is found, what is missing and where it comes from."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from memrope.cli import main
from memrope.eval.converters import hf_to_clip_text
from memrope.eval.evaluate import evaluate_videos
from memrope.eval.nets import musiq as musiq_module
from memrope.eval.nets import viclip as viclip_module
from memrope.eval.nets.amt import AmtS
from memrope.eval.nets.musiq import MUSIQ, MusiqConfig
from memrope.eval.nets.raft import RAFT
from memrope.eval.nets.viclip import ViClip, ViClipConfig

from .conftest import texture
from .test_musiq_viclip_nets import write_merges

TINY_MUSIQ = MusiqConfig(hidden_size=64, mlp_dim=96, num_heads=2, num_layers=2)
MERGES = [("a", "b</w>"), ("r", "e"), ("re", "d</w>")]
TINY_VICLIP = ViClipConfig(vision_width=64, vision_layers=1, patch_size=32, input_resolution=224, num_frames=8,
                           embed_dim=16, text_width=64, text_layers=1, context_length=32,
                           vocab_size=512 + len(MERGES) + 2)
VBENCH_DIMENSIONS = ("imaging_quality", "dynamic_degree", "motion_smoothness", "overall_consistency")


def write_vbench_cache(root):
    torch.manual_seed(0)
    (root / "pyiqa_model").mkdir(parents=True)
    torch.save(MUSIQ(TINY_MUSIQ).state_dict(), root / "pyiqa_model/musiq_spaq_ckpt-358bb6af.pth")
    (root / "raft_model/models").mkdir(parents=True)
    torch.save({f"module.{k}": v for k, v in RAFT().state_dict().items()}, root / "raft_model/models/raft-things.pth")
    (root / "amt_model").mkdir()
    torch.save({"state_dict": AmtS().state_dict()}, root / "amt_model/amt-s.pth")
    (root / "ViCLIP").mkdir()
    model = ViClip(TINY_VICLIP)
    sd = {f"vision_encoder.{k}": v for k, v in model.vision_encoder.state_dict().items()}
    sd.update({f"text_encoder.{k}": v for k, v in hf_to_clip_text(model.text_encoder.state_dict()).items()})
    sd["temp"] = model.temp.detach()
    torch.save({"model": sd}, root / "ViCLIP/ViClip-InternVid-10M-FLT.pth")
    write_merges(root / "ViCLIP/bpe_simple_vocab_16e6.txt.gz", MERGES)
    return root


@pytest.fixture
def tiny_sizes(monkeypatch):
    """The real loaders, checking against the tiny sizes these files were written at."""
    monkeypatch.setattr(musiq_module, "MusiqConfig", lambda: TINY_MUSIQ)
    monkeypatch.setattr(viclip_module, "ViClipConfig", lambda: TINY_VICLIP)


def moving_video(video, seconds=2.5, fps=4):
    tex = texture(128, 128 + 8 * int(seconds * fps) + 8, seed=3)
    return video("moving", (tex[:, 8 * t : 8 * t + 128] for t in range(int(seconds * fps))), fps=fps)


def test_every_dimension_is_computed_from_the_vbench_cache_layout(tmp_path, video, tiny_sizes):
    weights = write_vbench_cache(tmp_path / "vbench_cache")
    path = moving_video(video)
    ev = evaluate_videos([path], tmp_path / "report", weights_dir=weights, texts=["a red square"])
    whole = ev.videos[0].analysis.whole
    for name in VBENCH_DIMENSIONS:
        assert name not in ev.skipped and math.isfinite(whole[name]), name
    seg = ev.videos[0].analysis.per_segment
    assert seg["dynamic_degree"].tolist() in ([0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0])
    assert whole["dynamic_degree"] == pytest.approx(np.mean(seg["dynamic_degree"]))
    assert 0 <= whole["motion_smoothness"] <= 1 and -1 <= whole["overall_consistency"] <= 1
    data = json.loads((tmp_path / "report/metrics.json").read_text())
    drift = data["videos"][0]["long_drift"]
    assert drift["imaging_quality"]["basis"] == "frames" and drift["imaging_quality"]["vde_name"] == "VDE-Clarity"
    assert drift["dynamic_degree"]["basis"] == "segments"
    for name in VBENCH_DIMENSIONS:
        assert data["metrics"][name]["implementation"].startswith("vbench-exact")
    assert set(data["networks"]) >= {"musiq_spaq", "raft_things", "amt_s", "viclip_l14", "clip_bpe_vocab"}
    assert "Long-video drift as the papers report it" in (tmp_path / "report/report.html").read_text()


def test_overall_consistency_without_text_and_absent_weights_are_skipped_with_reasons(tmp_path, video, tiny_sizes):
    weights = write_vbench_cache(tmp_path / "w")
    (weights / "amt_model/amt-s.pth").unlink()
    ev = evaluate_videos([moving_video(video)], None, weights_dir=weights)
    assert ev.skipped["overall_consistency"].startswith("no prompt text for this video")
    assert "amt_model/amt-s.pth" in ev.skipped["motion_smoothness"]
    assert math.isfinite(ev.videos[0].analysis.whole["dynamic_degree"])
    assert "motion_smoothness" not in ev.videos[0].analysis.whole


def test_a_broken_checkpoint_is_a_one_line_error_before_any_output(tmp_path, video, capsys):
    weights = tmp_path / "w"
    (weights / "amt_model").mkdir(parents=True)
    torch.save({"state_dict": {"encoder.pyramid1.0.0.weight": torch.zeros(1)}}, weights / "amt_model/amt-s.pth")
    out = tmp_path / "report"
    code = main(["eval", str(moving_video(video)), "--out", str(out), "--weights-dir", str(weights), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert err.startswith("memrope: error: ") and "\n" not in err and "amt-s.pth: not a AMT-S checkpoint" in err


def test_weights_check_lists_found_missing_expected_names_and_origins(tmp_path, capsys, tiny_sizes):
    weights = write_vbench_cache(tmp_path / "w")
    (weights / "ViCLIP/bpe_simple_vocab_16e6.txt.gz").unlink()
    assert main(["weights", "check", str(weights), "--load"]) == 0
    out = capsys.readouterr().out
    assert f"raft_things             found (original) {weights / 'raft_model/models/raft-things.pth'}" in out
    assert "clip_bpe_vocab          missing" in out and "ViCLIP/bpe_simple_vocab_16e6.txt.gz" in out
    assert "openai/CLIP clip/bpe_simple_vocab_16e6.txt.gz" in out and "FAILS TO LOAD" not in out
    assert "  imaging_quality         computed" in out
    assert "  overall_consistency     skipped: missing clip_bpe_vocab" in out
    assert "  subject_consistency     skipped: missing dino_vitb16" in out
    torch.save({"nothing": torch.zeros(1)}, weights / "amt_model/amt-s.pth")
    main(["weights", "check", str(weights), "--load"])
    out = capsys.readouterr().out
    assert "amt-s.pth  FAILS TO LOAD:" in out and "  motion_smoothness       skipped: unloadable amt_s" in out


def test_weights_check_of_a_missing_folder_is_a_user_error(tmp_path, capsys):
    assert main(["weights", "check", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"memrope: error: weights folder {tmp_path / 'nope'} does not exist or is not a folder"


def test_text_count_must_match_the_videos(tmp_path, video, capsys):
    path = moving_video(video)
    code = main(["eval", str(path), str(path), "--out", str(tmp_path / "r"), "--text", "a", "--text", "b",
                 "--text", "c", "--no-progress"])
    assert code == 2 and not (tmp_path / "r").exists()
    err = capsys.readouterr().err.strip()
    assert err == "memrope: error: --text: got 3 prompts for 2 videos (give one, or one per video)"
