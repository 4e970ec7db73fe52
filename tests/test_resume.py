"""Crash safety: killed runs resume to the identical video; SIGINT leaves a playable, resumable run."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from memrope.cli import main
from memrope.video import count_frames, read_frames

CHUNKS = 63  # >= 60 chunks
EVERY = 4


def args(out: Path, extra=()):
    return ["generate", "--policy", "memrope", "--latent-frames", str(3 * CHUNKS), "--out", str(out),
            "--checkpoint-every", str(EVERY), "--save-latents", "--no-progress", "--seed", "11", *extra]


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def chunk_stats(run_dir: Path) -> list[dict]:
    """The committed chunk records: the log up to the length the manifest recorded."""
    mark = manifest(run_dir)["logs"]["chunks.jsonl"]
    data = (run_dir / "chunks.jsonl").read_bytes()[: mark["bytes"]]
    return [json.loads(line) for line in data.splitlines()]


def latents(run_dir: Path) -> torch.Tensor:
    files = sorted((run_dir / "segments").glob("*.latents.safetensors"))
    return torch.cat([load_file(str(f))["latents"] for f in files], dim=2)


def start(argv):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "memrope.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


def wait_for_chunks(run_dir: Path, at_least: int, proc, timeout=120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return
        try:
            if manifest(run_dir)["chunks_done"] >= at_least:
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.01)
    raise TimeoutError("the run made no progress")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "v.mp4"
    assert main(args(out)) == 0
    return out, Path(str(out) + ".run")


def test_sigkill_at_random_points_then_resume_is_bit_identical(straight, tmp_path):
    ref_out, ref_run = straight
    out = tmp_path / "v.mp4"
    run_dir = Path(str(out) + ".run")
    rng = random.Random(1234)
    kills = 0
    argv = args(out)
    targets = sorted(rng.sample(range(2, CHUNKS - 8), 3))
    for target in targets:
        proc = start(argv)
        wait_for_chunks(run_dir, target, proc)
        time.sleep(rng.uniform(0.0, 0.15))  # land anywhere, mid-segment included
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        _, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, f"the run ended by itself ({proc.returncode}): {err.decode()}"
        argv = ["generate", "--resume", str(run_dir), "--no-progress"]
    assert kills == 3
    assert manifest(run_dir)["complete"] is False
    assert main(argv) == 0
    got = manifest(run_dir)
    assert got["complete"] and got["chunks_done"] == CHUNKS
    assert [c["frames_sha256"] for c in chunk_stats(run_dir)] == [c["frames_sha256"] for c in chunk_stats(ref_run)]
    assert torch.equal(latents(run_dir), latents(ref_run))
    assert count_frames(out) == count_frames(ref_out)
    assert (read_frames(out) == read_frames(ref_out)).all()


def test_sigint_leaves_playable_output_and_resumes(straight, tmp_path):
    ref_out, ref_run = straight
    out = tmp_path / "v.mp4"
    run_dir = Path(str(out) + ".run")
    proc = start(args(out))
    wait_for_chunks(run_dir, 6, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert b"--resume" in err
    done = manifest(run_dir)["chunks_done"]
    assert 6 <= done < CHUNKS
    finished = sum(c["video_frames"] for c in chunk_stats(run_dir))
    assert count_frames(out) == finished  # playable, every finished chunk in it
    assert main(["generate", "--resume", str(run_dir), "--no-progress"]) == 0
    assert torch.equal(latents(run_dir), latents(ref_run))


def test_non_finite_latents_stop_the_run_and_keep_the_last_good_state(straight, tmp_path, monkeypatch, capsys):
    from memrope.generate import StreamingGenerator

    real = StreamingGenerator._denoise

    def poisoned(self):
        result = real(self)
        if result.index == 9:
            result.latents[0, 0, 0, 0, 0] = float("nan")
        return result

    monkeypatch.setattr(StreamingGenerator, "_denoise", poisoned)
    out = tmp_path / "v.mp4"
    assert main(args(out)) == 3
    err = capsys.readouterr().err
    assert "non-finite values (NaN/inf) in the latents of chunk 9" in err and "Traceback" not in err
    run_dir = Path(str(out) + ".run")
    assert manifest(run_dir)["chunks_done"] == 8  # the checkpoint before the bad chunk
    monkeypatch.setattr(StreamingGenerator, "_denoise", real)
    assert main(["generate", "--resume", str(run_dir), "--no-progress"]) == 0
    assert torch.equal(latents(run_dir), latents(straight[1]))


def test_full_disk_is_reported_and_the_run_resumes(straight, tmp_path, monkeypatch, capsys):
    from memrope import video

    real = video.VideoWriter.write
    calls = {"n": 0}

    def write(self, frames):
        calls["n"] += 1
        if calls["n"] == 14:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, frames)

    monkeypatch.setattr(video.VideoWriter, "write", write)
    out = tmp_path / "v.mp4"
    assert main(args(out)) == 4  # its own status: the run is fine, the disk is not
    err = capsys.readouterr().err
    assert "disk full" in err and "--resume" in err
    monkeypatch.setattr(video.VideoWriter, "write", real)
    run_dir = Path(str(out) + ".run")
    assert manifest(run_dir)["chunks_done"] == 12
    assert main(["generate", "--resume", str(run_dir), "--no-progress"]) == 0
    assert torch.equal(latents(run_dir), latents(straight[1]))


def test_manifest_cannot_point_outside_its_run_directory(straight, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "copy.run"
    shutil.copytree(straight[1], run_dir)
    data = manifest(run_dir)
    data["complete"] = False
    data["state"] = "../../../etc/passwd"
    (run_dir / "manifest.json").write_text(json.dumps(data))
    assert main(["generate", "--resume", str(run_dir), "--no-progress"]) == 2
    assert "outside the run directory" in capsys.readouterr().err


@pytest.mark.parametrize("setup,message", [
    (lambda d: None, "is not a memrope run directory"),
    (lambda d: (d / "manifest.json").write_text("{not json"), "is not valid JSON"),
    (lambda d: (d / "manifest.json").write_text(json.dumps({"version": 99})), "is not a memrope manifest"),
])
def test_bad_resume_directories(tmp_path, capsys, setup, message):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    setup(run_dir)
    assert main(["generate", "--resume", str(run_dir), "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_existing_run_directory_is_not_overwritten(straight, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    assert main(args(out, ["--run-dir", str(straight[1])])) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert not out.exists()


def test_crash_between_state_and_manifest_resumes_from_the_named_state(straight, tmp_path, capsys):
    """A kill after a new state file is written but before the manifest names it must not matter."""
    out = tmp_path / "v.mp4"
    proc = start(args(out))
    run_dir = Path(str(out) + ".run")
    wait_for_chunks(run_dir, 8, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    named = manifest(run_dir)["state"]
    (run_dir / "state_000999.safetensors").write_bytes(b"a newer state the manifest never named")
    (run_dir / "state_001000.safetensors.tmp").write_bytes(b"half written")
    assert main(["generate", "--resume", str(run_dir), "--no-progress"]) == 0
    assert torch.equal(latents(run_dir), latents(straight[1]))
    assert sorted(p.name for p in run_dir.glob("state_*")) == [manifest(run_dir)["state"]]
    assert named != manifest(run_dir)["state"]


def test_a_finished_run_extended_equals_one_that_was_longer_from_the_start(straight, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    short = ["generate", "--policy", "memrope", "--latent-frames", str(3 * 30), "--out", str(out),
             "--checkpoint-every", str(EVERY), "--save-latents", "--no-progress", "--seed", "11"]
    assert main(short) == 0
    run_dir = Path(str(out) + ".run")
    assert manifest(run_dir)["complete"] and manifest(run_dir)["chunks_done"] == 30
    assert main(["generate", "--resume", str(run_dir), "--latent-frames", str(3 * CHUNKS), "--no-progress"]) == 0
    got = manifest(run_dir)
    assert got["complete"] and got["chunks_done"] == CHUNKS
    assert [c["frames_sha256"] for c in chunk_stats(run_dir)] == [c["frames_sha256"] for c in chunk_stats(straight[1])]
    assert torch.equal(latents(run_dir), latents(straight[1]))
    assert count_frames(out) == count_frames(straight[0])
    capsys.readouterr()
    assert main(["generate", "--resume", str(run_dir), "--latent-frames", str(3 * 30), "--no-progress"]) == 2
    assert "cannot be shortened" in capsys.readouterr().err


def test_an_unfinished_run_extended_equals_one_that_was_longer_from_the_start(straight, tmp_path):
    out = tmp_path / "v.mp4"
    argv = ["generate", "--policy", "memrope", "--duration", "5", "--out", str(out), "--checkpoint-every",
            str(EVERY), "--save-latents", "--no-progress", "--seed", "11"]
    proc = start(argv)
    run_dir = Path(str(out) + ".run")
    wait_for_chunks(run_dir, 8, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not manifest(run_dir)["complete"]
    assert main(["generate", "--resume", str(run_dir), "--latent-frames", str(3 * CHUNKS), "--no-progress"]) == 0
    assert manifest(run_dir)["settings"]["latent_frames"] == 3 * CHUNKS
    assert [c["frames_sha256"] for c in chunk_stats(run_dir)] == [c["frames_sha256"] for c in chunk_stats(straight[1])]
    assert torch.equal(latents(run_dir), latents(straight[1]))
