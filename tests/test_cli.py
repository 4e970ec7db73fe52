import json
import subprocess
import sys

import pytest
import torch

from memrope.cli import main
from memrope.models.toy.default import load_default
from memrope.run import latent_frames_for
from memrope.video import count_frames, read_frames

STRIDE = load_default().decoder.temporal_stride  # video frames per latent frame of the default decoder


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_writes_video_and_stats(tmp_path, capsys):
    out, stats = tmp_path / "v.mp4", tmp_path / "s.json"
    code, _, err = run(["generate", "--policy", "memrope", "--latent-frames", "24", "--out", str(out),
                        "--stats", str(stats), "--no-progress"], capsys)
    assert code == 0, err
    data = json.loads(stats.read_text())
    assert count_frames(out) == 1 + STRIDE * (24 - 1) == data["summary"]["video_frames"]
    assert [c["index"] for c in data["chunks"]] == list(range(8))
    for chunk in data["chunks"]:
        assert {"index", "ms", "cache_bytes", "max_frame_pos"} <= set(chunk)
    assert data["summary"]["max_frame_pos"] == 11
    assert data["run"]["policy"]["policy"] == "memrope"


def test_duration_rounds_up_to_whole_chunks():
    assert latent_frames_for(10.0, 16, 4, 3) == 42  # 160 frames -> 41 latents -> 42
    assert 1 + 4 * (latent_frames_for(1.0, 16, 4, 3) - 1) >= 16


@pytest.mark.parametrize("argv,message", [
    (["--policy", "nope"], "unknown cache policy 'nope'"),
    (["--policy-opt", "cache_size=5"], "must hold sink"),
    (["--policy-opt", "bogus"], "must look like key=value"),
    (["--latent-frames", "10"], "multiple of the chunk \\(3\\); use 9 or 12"),
    (["--policy", "full", "--latent-frames", "4200"], "outside the RoPE table"),
])
def test_user_errors_exit_2_without_output(tmp_path, capsys, argv, message):
    out = tmp_path / "v.mp4"
    code, _, err = run(["generate", *argv, "--out", str(out), "--no-progress"], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("memrope: error:")
    assert "Traceback" not in err
    import re
    assert re.search(message, err)
    assert not out.exists()


def test_argument_errors_are_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--latent-frames", "-3", "--out", str(tmp_path / "v.mp4")])
    assert exc.value.code == 2
    assert "expected a number >= 1" in capsys.readouterr().err


def test_policies_lists_every_policy_and_preset(capsys):
    from memrope.cache import policy_names

    code, out, _ = run(["policies"], capsys)
    assert code == 0
    for name in policy_names():
        assert f"\n{name}\n" in f"\n{out}"
    assert "arXiv 2603.12513" in out


def _peak_rss_mb(tmp_path, latent_frames):
    out = tmp_path / f"v{latent_frames}.mp4"
    stats = tmp_path / f"s{latent_frames}.json"
    subprocess.run([sys.executable, "-m", "memrope.cli", "generate", "--policy", "memrope", "--latent-frames",
                    str(latent_frames), "--out", str(out), "--stats", str(stats), "--no-progress"],
                   check=True, capture_output=True)
    summary = json.loads(stats.read_text())["summary"]
    assert count_frames(out) == 1 + STRIDE * (latent_frames - 1)
    return summary["peak_rss_mb"]


def test_peak_memory_flat_from_300_to_1200_latent_frames(tmp_path):
    short, long = _peak_rss_mb(tmp_path, 300), _peak_rss_mb(tmp_path, 1200)
    assert long <= 1.10 * short, (short, long)


def test_decoder_on_its_own_device_writes_the_same_video(tmp_path, capsys):
    """``--decode-device`` places the decoder apart from the model (a second GPU in real use; the
    CPU named explicitly here): the settings carry it and the frames are the same."""
    videos = []
    for extra in ([], ["--decode-device", "cpu"]):  # both as run directories: segments encode alike
        out = tmp_path / f"v{len(videos)}.mp4"
        code, _, err = run(["generate", "--latent-frames", "9", "--out", str(out), "--no-progress",
                            "--checkpoint-every", "1", *extra], capsys)
        assert code == 0, err
        videos.append(read_frames(out))
    assert (videos[0] == videos[1]).all()
    manifest = json.loads((tmp_path / "v1.mp4.run" / "manifest.json").read_text())
    assert manifest["settings"]["model"]["decode_device"] == "cpu"  # a resume rebuilds the same split


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpu_split_matches_one_gpu(tmp_path, capsys):
    videos = []
    for extra in ([], ["--decode-device", "cuda:1"]):
        out = tmp_path / f"v{len(videos)}.mp4"
        code, _, err = run(["generate", "--latent-frames", "9", "--device", "cuda:0", "--out", str(out),
                            "--no-progress", *extra], capsys)
        assert code == 0, err
        videos.append(read_frames(out).astype(int))
    assert abs(videos[0] - videos[1]).max() <= 1  # the same decoder on two devices: equal up to rounding
