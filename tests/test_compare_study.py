"""A study on tiny real-layout Self-Forcing files: killed mid-way and rerun (nothing done is made again),
rerun once more (nothing at all), and the same study over two torchrun processes gives the same tables.

2 policies x 2 prompts x 2 seeds, each video 5 chunks (3.56 s), evaluated on 1 s segments (3 whole
ones: the trailing 0.56 s partial segment is dropped), checkpoints every chunk.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.models.tiny_wan_files import TINY_REAL, random_wan, self_forcing_dict, write_wan_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
PIXELS = 16
CHUNKS = 5  # 3 s at 16 fps -> 48 frames -> 13 latent frames -> 15 (whole chunks of 3) -> 57 frames
KILL_VIDEO, KILL_AFTER_CHUNK = 2, 2  # the third video dies (SIGKILL) as its second chunk is done

STUDY = """\
name: tiny-self-forcing
out: out
generate: {{device: cpu, dtype: float32, height: {px}, width: {px}}}
bases:
  - {{name: self-forcing, model: self-forcing, checkpoint: {ckpt}, wan-dir: {wan}}}
policies: [memrope, deep_forcing]
prompts: ["a cat walks on the grass", "a dog runs on the beach"]
seeds: 2
horizons: [3s]
segment_seconds: 1
checkpoint_seconds: 0.75
"""

# SIGKILL (no handler, no checkpoint) in the middle of one video: what a preempted node does.
KILLER = f"""
import os, signal, sys
import memrope.run as run
real, calls = run.generate, [0]
def generate(*args, on_chunk=None, **kwargs):
    calls[0] += 1
    seen = [0]
    def hook(stats):
        if on_chunk: on_chunk(stats)
        seen[0] += 1
        if calls[0] == {KILL_VIDEO + 1} and seen[0] == {KILL_AFTER_CHUNK}:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, on_chunk=hook, **kwargs)
run.generate = generate
from memrope.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "src")}


def _cli(args: list[str], head=("-m", "memrope.cli"), timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *head, *args], env=_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    ema, gen, critic = (random_wan(TINY_REAL, seed) for seed in range(3))
    torch.save(self_forcing_dict(ema, gen, critic), root / "self_forcing_dmd.pt")
    wan = write_wan_dir(root / "Wan2.1-T2V-1.3B", "original")
    (root / "study.yaml").write_text(STUDY.format(px=PIXELS, ckpt=root / "self_forcing_dmd.pt", wan=wan))
    return root


def _log(out: Path) -> list[dict]:
    lines = []
    for f in sorted((out / "logs").glob("rank*.jsonl")):
        lines += [json.loads(x) for x in f.read_text().splitlines()]
    return lines


def _tables(out: Path) -> dict:
    return json.loads((out / "report" / "tables.json").read_text())["tables"]


@pytest.fixture(scope="module")
def resumed(study_dir):
    """Kill, rerun, rerun: the logs of each step and the done videos' timestamps before the rerun."""
    out = study_dir / "out"
    study = str(study_dir / "study.yaml")
    killed = _cli(["compare", "--study", study, "--no-progress"], head=("-c", KILLER))
    assert killed.returncode == -9, killed.stderr[-3000:]
    first = _log(out)
    done = {p.name[:-len(".done")]: (out / "videos" / p.name[:-len(".done")]).stat().st_mtime_ns
            for p in (out / "videos").glob("*.mp4.done")}
    again = _cli(["compare", "--study", study, "--no-progress"])
    assert again.returncode == 0, again.stderr[-3000:]
    second = _log(out)[len(first):]
    third_run = _cli(["compare", "--study", study, "--no-progress"])
    assert third_run.returncode == 0, third_run.stderr[-3000:]
    return {"out": out, "first": first, "done": done, "second": second, "third": third_run.stderr,
            "third_log": _log(out)[len(first) + len(second):]}


def test_killed_study_continues_without_making_anything_again(resumed):
    first, second, done, out = resumed["first"], resumed["second"], resumed["done"], resumed["out"]
    assert len(first) == KILL_VIDEO and all(r["action"] == "new" and r["chunks_generated"] == CHUNKS for r in first)
    assert len(done) == KILL_VIDEO  # the videos finished before the kill
    assert not {r["video"] for r in second} & set(done)  # not one of them touched again
    assert all((out / "videos" / name).stat().st_mtime_ns == stamp for name, stamp in done.items())
    killed = second[0]
    # checkpointed after chunk 1; chunk 2 was made but not saved when SIGKILL came: 3 chunks to go
    assert killed["action"] == "continued" and killed["chunks_before"] == KILL_AFTER_CHUNK - 1
    assert killed["chunks_generated"] == CHUNKS - killed["chunks_before"]
    assert [r["action"] for r in second[1:]] == ["new"] * (8 - KILL_VIDEO - 1)
    # a third run makes nothing: every video and every evaluation is done with the same settings
    assert resumed["third_log"] == []
    assert "videos made or continued 0, already done 8" in resumed["third"]
    assert "evaluations made 0, already done 8" in resumed["third"]


def test_report_shows_only_what_n_supports(resumed):
    out = resumed["out"]
    tables = _tables(out)
    table = tables["self-forcing@3s"]
    assert table["units"] == ["p00_s0", "p00_s1", "p01_s0", "p01_s1"]
    n = len(table["units"])
    for tests in table["tests"].values():
        for t in tests.values():
            if t["difference"]["n"]:
                assert t["min_p"] == 2.0 ** (1 - t["difference"]["n"]) and t["p"] >= t["min_p"]
                assert t["p_holm"] >= t["p"]
    for means in table["means"].values():
        for m in means.values():
            assert m["n"] == n and m["kind"] == "t"  # 4 units: a t interval, not a bootstrap one
    for f in (out / "eval").glob("*.json"):
        if f.name == "manifest.json":
            continue
        r = json.loads(f.read_text())
        # 3.5625 s of video, 1 s segments: 3 whole segments, the 0.5625 s (9 frames) past 3 s dropped
        assert r["whole_segments"] == 3 and math.isclose(r["seconds_evaluated"], 3.0)
        assert all(len(v) == 3 for v in r["per_segment"].values())
        assert all(d["n_segments"] <= 3 for d in r["drift"].values())
    html = (out / "report" / "report.html").read_text()
    assert "3 whole segments of 1 s evaluated" in html and "no p can be below 0.12" in html
    assert "seam period 12 frames, from the chunk" in html


def test_two_torchrun_processes_give_the_same_tables(resumed, study_dir):
    sharded = study_dir / "sharded"
    cmd = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "memrope.cli"]
    run = _cli(["compare", "--study", str(study_dir / "study.yaml"), "--out", str(sharded), "--no-progress"],
               head=cmd, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    ranks = {r: [x["video"] for x in json.loads("[" + ",".join(
        (sharded / "logs" / f"rank{r}.jsonl").read_text().splitlines()) + "]")] for r in (0, 1)}
    assert len(ranks[0]) == len(ranks[1]) == 4 and not set(ranks[0]) & set(ranks[1])
    manifest = json.loads((sharded / "eval" / "manifest.json").read_text())
    assert sorted(r["rank"] for r in manifest["ranks"]) == [0, 1] and manifest["done"] == 8
    assert _tables(sharded) == _tables(resumed["out"])  # the resumed videos equal the fresh ones, too
    merged = _cli(["compare", "--study", str(study_dir / "study.yaml"), "--out", str(sharded), "--merge"])
    assert merged.returncode == 0, merged.stderr[-2000:]
    assert _tables(sharded) == _tables(resumed["out"])
