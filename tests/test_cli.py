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


@pytest.mark.gpu
def test_decoder_on_its_own_device_writes_the_same_video(tmp_path, capsys):
    """``--decode-device`` places the decoder apart from the model (the model on the CPU, the decoder on
    the GPU here: naming the CPU for both would compare the CPU with itself): the settings carry it
    and the frames agree to a level of rounding."""
    videos = []
    for extra in ([], ["--decode-device", "cuda"]):  # both as run directories: segments encode alike
        out = tmp_path / f"v{len(videos)}.mp4"
        code, _, err = run(["generate", "--latent-frames", "9", "--out", str(out), "--no-progress",
                            "--checkpoint-every", "1", "--device", "cpu", *extra], capsys)
        assert code == 0, err
        videos.append(read_frames(out).astype(int))
    assert abs(videos[0] - videos[1]).max() <= 1  # another device's float rounding, before the video codec
    manifest = json.loads((tmp_path / "v1.mp4.run" / "manifest.json").read_text())
    assert manifest["settings"]["model"]["decode_device"] == "cuda"  # a resume rebuilds the same split


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


def _all_parsers():
    """Every parser of the command line: the top level, each subcommand, and the forwarded ones."""
    import argparse

    from memrope.bench import build_parser as bench_parser
    from memrope.cli import build_parser
    from memrope.distributed import build_parser as many_parser
    from memrope.serve.app import build_parser as serve_parser

    top = build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    parsers = {"memrope": top, **{f"memrope {k}": v for k, v in sub.choices.items() if k not in
                                  ("bench", "generate-many", "serve")}}
    parsers["memrope bench"], parsers["memrope generate-many"] = bench_parser(), many_parser()
    parsers["memrope serve"] = serve_parser()
    return parsers


def test_every_option_has_help_and_help_shows_the_defaults(capsys):
    import argparse

    missing, no_default = [], []
    for name, parser in _all_parsers().items():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            if not action.help:
                missing.append(f"{name} {action.dest}")
        text = parser.format_help()
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS) and \
                    not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                if "default" not in (action.help or "") and \
                        f"(default:{action.default})".replace(" ", "") not in "".join(text.split()):
                    no_default.append(f"{name} {action.option_strings[0]}")
    assert not missing and not no_default, (missing, no_default)
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: memrope)", "(default: 0)", "(default: 3)", "(default: 16)", "(default: 18)",
                  "(default: 480)", "(default: 832)", "float16", "Exit statuses: 0 done; 2 a user error"):
        assert shown in text, shown


def test_an_argument_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--seed", "x"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "usage:" not in err
    assert err == "memrope generate: error: argument --seed: invalid int value: 'x' (see `memrope generate --help`)\n"


def test_vocabulary_lists_every_word_of_the_toy_world(capsys):
    from memrope.world.prompts import VOCABULARY

    code, out, _ = run(["vocabulary"], capsys)
    assert code == 0
    for role, words in VOCABULARY.items():
        assert any(line.startswith(role) and all(w in line for w in words) for line in out.splitlines()), role


def test_unknown_words_name_the_nearest_known_ones(tmp_path, capsys):
    code, _, err = run(["generate", "--prompt", "a red disk and a blu square", "--out", str(tmp_path / "v.mp4")],
                       capsys)
    assert code == 2 and not (tmp_path / "v.mp4").exists()
    assert "does not know 'disk' (nearest: disc" in err and "'blu' (nearest: blue" in err
    assert "memrope vocabulary" in err


def test_start_up_line_names_the_generation_seed_and_lossless_is_recorded(tmp_path, capsys):
    out = tmp_path / "v.mkv"
    code, _, err = run(["generate", "--seed", "7", "--latent-frames", "6", "--out", str(out), "--lossless",
                        "--checkpoint-every", "1", "--no-progress"], capsys)
    assert code == 0, err
    assert "policy memrope, seed 7," in err and "training seed 0" in err
    manifest = json.loads((tmp_path / "v.mkv.run" / "manifest.json").read_text())
    assert manifest["settings"]["video"] == {"codec": "ffv1"}
    chunks = [json.loads(line) for line in (tmp_path / "v.mkv.run" / "chunks.jsonl").read_bytes().splitlines()]
    import hashlib

    frames = read_frames(out)  # the assembled lossless file decodes to exactly the generated frames
    assert [hashlib.sha256(frames[3 * i:3 * i + 3].tobytes()).hexdigest() for i in range(2)] == \
        [c["frames_sha256"] for c in chunks]


def test_crf_is_recorded_and_conflicts_on_resume(tmp_path, capsys):
    out = tmp_path / "v.mp4"
    assert run(["generate", "--crf", "30", "--latent-frames", "6", "--out", str(out), "--checkpoint-every", "1",
                "--no-progress"], capsys)[0] == 0
    run_dir = tmp_path / "v.mp4.run"
    assert json.loads((run_dir / "manifest.json").read_text())["settings"]["video"] == {"codec": "h264", "crf": 30}
    code, _, err = run(["generate", "--resume", str(run_dir), "--crf", "18", "--latent-frames", "9"], capsys)
    assert code == 2 and "--crf" in err


def test_bench_prints_its_table_on_stdout_and_json_only_into_a_file(tmp_path, capsys):
    argv = ["bench", "--config", "tiny", "--latent", "4x4", "--chunks", "3", "--warmup", "1", "--policies",
            "memrope", "--device", "cpu", "--matmul-n", "64"]
    code, out, err = run(argv, capsys)
    assert code == 0 and out.count("\n") < 10 and "| memrope |" in out and "{" not in out
    code, out, err = run([*argv, "--out", str(tmp_path / "b.json")], capsys)
    assert code == 0 and "| memrope |" in out
    assert set(json.loads((tmp_path / "b.json").read_text())["results"]) == {"memrope"}


def test_compare_says_which_video_of_how_many(tmp_path, capsys):
    code, _, err = run(["compare", "--policies", "memrope,sliding_window", "--latent-frames", "3", "--out",
                        str(tmp_path / "cmp"), "--no-progress"], capsys)
    assert code == 0, err
    assert "video 1 of 2: memrope" in err and "video 2 of 2: sliding_window" in err


def test_eval_progress_bar_knows_its_total_for_a_streamed_mp4(tmp_path, monkeypatch):
    """A fragmented MP4 declares no frame count, only a duration: the bar's total comes from it."""
    import numpy as np

    import memrope.eval.analysis as analysis
    from memrope.eval.reader import probe_video
    from memrope.video import VideoWriter

    path = tmp_path / "v.mp4"
    with VideoWriter(path, fps=16) as writer:
        writer.write(np.zeros((40, 16, 16, 3), dtype=np.uint8))
    assert probe_video(path).frame_count == 0  # what made the bar total-less
    totals = []
    real = analysis.tqdm
    monkeypatch.setattr(analysis, "tqdm", lambda *a, **k: totals.append(k.get("total")) or real(*a, **k))
    analysis.analyze_video(path, progress=False)
    assert totals == [40]
