"""Prompt sharding over ranks: disjoint and complete, resumable, and a real two-process torchrun run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from memrope.schedule import load_prompt_list as read_prompts
from memrope.sharding import (
    MANIFEST,
    is_done,
    marker_path,
    run_sharded,
    shard,
)

PROMPTS = [f"prompt number {i}" for i in range(11)]


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_shards_are_disjoint_and_complete(world):
    n = 11
    shards = [shard(n, r, world) for r in range(world)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(n))
    assert len(flat) == len(set(flat))
    assert all(i % world == r for r, s in enumerate(shards) for i in s)


def test_shard_rejects_bad_rank():
    with pytest.raises(ValueError):
        shard(5, 2, 2)


def test_read_prompts(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("# a comment\nfirst prompt\n\n second prompt \n")
    assert read_prompts(txt) == ["first prompt", "second prompt"]
    js = tmp_path / "p.json"
    js.write_text(json.dumps(["a", {"prompt": "b"}]))
    assert read_prompts(js) == ["a", "b"]


def _writer(log: list):
    def generate_one(i: int, prompt: str, path: Path) -> None:
        path.write_text(prompt)
        log.append(i)
    return generate_one


def test_single_process_resume(tmp_path):
    log: list[int] = []
    report = run_sharded(PROMPTS, tmp_path, _writer(log), rank=0, world=1)
    assert log == list(range(len(PROMPTS))) and report.skipped == []
    # A crash mid-write: output present, marker missing -> regenerated; the rest are skipped.
    marker_path(tmp_path / "000003.mp4").unlink()
    log.clear()
    report = run_sharded(PROMPTS, tmp_path, _writer(log), rank=0, world=1)
    assert log == [3]
    assert sorted(report.skipped) == [i for i in range(len(PROMPTS)) if i != 3]
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["done"] == len(PROMPTS) and manifest["missing"] == []


def test_missing_output_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="did not write"):
        run_sharded(PROMPTS[:2], tmp_path, lambda i, p, path: None, rank=0, world=1)


WORKER = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from memrope.sharding import run_sharded

    out, log_dir = Path(sys.argv[1]), Path(sys.argv[2])
    prompts = json.loads(Path(sys.argv[3]).read_text())
    rank = int(os.environ["RANK"])

    def generate_one(i, prompt, path):
        path.write_text(prompt)
        with open(log_dir / f"rank{rank}.log", "a") as f:
            f.write(f"{i}\\n")

    report = run_sharded(prompts, out, generate_one)
    (log_dir / f"report{rank}.json").write_text(json.dumps(report.__dict__))
""")


def _torchrun(tmp_path: Path, out: Path, log_dir: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS))
    log_dir.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(out), str(log_dir), str(prompts)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def _generated(log_dir: Path) -> dict[int, list[int]]:
    out = {}
    for r in (0, 1):
        f = log_dir / f"rank{r}.log"
        out[r] = [int(x) for x in f.read_text().split()] if f.exists() else []
    return out


def test_torchrun_two_processes_cover_every_prompt_once(tmp_path):
    out = tmp_path / "videos"
    _torchrun(tmp_path, out, tmp_path / "logs")
    gen = _generated(tmp_path / "logs")
    flat = gen[0] + gen[1]
    assert sorted(flat) == list(range(len(PROMPTS)))  # complete and disjoint
    assert all(i % 2 == 0 for i in gen[0]) and all(i % 2 == 1 for i in gen[1])
    assert all(is_done(out / f"{i:06d}.mp4") for i in range(len(PROMPTS)))
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["done"] == len(PROMPTS) and [r["rank"] for r in manifest["ranks"]] == [0, 1]


def test_torchrun_resume_skips_done_prompts(tmp_path):
    out = tmp_path / "videos"
    out.mkdir()
    done = {0, 1, 4, 7}
    for i in done:  # finished earlier: output + marker
        (out / f"{i:06d}.mp4").write_text("old")
        marker_path(out / f"{i:06d}.mp4").write_text("{}")
    (out / f"{5:06d}.mp4").write_text("partial")  # crashed mid-write: no marker
    _torchrun(tmp_path, out, tmp_path / "logs")
    gen = _generated(tmp_path / "logs")
    flat = gen[0] + gen[1]
    assert sorted(flat) == sorted(set(range(len(PROMPTS))) - done)
    assert len(flat) == len(set(flat))
    assert all((out / f"{i:06d}.mp4").read_text() == "old" for i in done)
    assert (out / f"{5:06d}.mp4").read_text() == PROMPTS[5]


def test_generate_many_single_process(tmp_path, capsys):
    from memrope.cli import main
    from memrope.distributed import ManyRuns

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red disc\na blue square\n")
    out = tmp_path / "out"
    argv = ["generate-many", "--prompts", str(prompts), "--out-dir", str(out), "--", "--latent-frames", "3"]
    assert main(argv) == 0
    runs = ManyRuns(["--latent-frames", "3"], 0)
    names = [runs.output_name(i, p) for i, p in enumerate(["a red disc", "a blue square"])]
    assert all(is_done(out / name, runs.identity(i, p)) for i, (name, p) in
               enumerate(zip(names, ["a red disc", "a blue square"])))
    assert names[0].startswith("000000_") and names[0] != names[1]  # index + settings hash
    marker = json.loads(marker_path(out / names[0]).read_text())
    assert marker["settings_hash"] == runs.identity(0, "a red disc")
    capsys.readouterr()
    assert main(argv) == 0 and "generated 0, skipped 2" in capsys.readouterr().out  # a rerun skips what is done
    assert main(["generate-many", "--prompts", str(prompts), "--out-dir", str(out), "--", "--seed", "3"]) == 2
    assert "--seed is set per prompt" in capsys.readouterr().err
    before = sorted(p.name for p in out.iterdir())
    assert main([*argv, "--policy", "sliding_window"]) == 2  # another policy into the same folder: refused
    err = capsys.readouterr().err
    assert "holds videos made with other settings (differing: policy)" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == before
