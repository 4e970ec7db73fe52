"""Every subcommand driven with a generated battery of bad inputs.

For each case: the documented exit status (2), at most a few lines on stderr that start with
``memrope`` and name the problem, no traceback, and no file created, changed or removed anywhere in
the sandbox or the case's own folder. The cases are generated from a few kinds of bad input
(missing, unreadable and unwritable paths, wrong file types, corrupt or mismatched run directories,
bad numbers, unknown names, conflicting options) crossed with the options of each command; all run
in-process through ``memrope.cli.main``.

Unwritable places: a file where a folder must be (works for any user), and a ``readonly`` folder
that ``os.access`` reports read-only (a real ``chmod`` does not stop root, which CI may be; the
checks ask ``os.access``, which is what a read-only mount answers too).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from memrope.cli import main
from memrope.video import VideoWriter

MAX_LINES = 3


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    pattern: str  # a regex the message must contain
    status: int = 2
    setup: str | None = None  # name of a run-directory mutation, see RUN_MUTATIONS


# --------------------------------------------------------------------------- the sandbox
@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    import numpy as np

    root = tmp_path_factory.mktemp("sandbox")
    (root / "afile.txt").write_text("just text\n")
    (root / "folder").mkdir()
    (root / "readonly").mkdir()
    (root / "unreadable.txt").write_text("a red disc\n")  # os.access answers: no read permission
    shutil.copy(root / "unreadable.txt", root / "unreadable.mp4")
    with VideoWriter(root / "video.mp4", fps=16) as w:
        w.write(np.random.default_rng(0).integers(0, 255, (4, 16, 16, 3), dtype=np.uint8))
    (root / "text.mp4").write_text("not a video\n")
    (root / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (root / "prompts.txt").write_text("a red disc\na blue ring on a grey checker\n")
    (root / "bad_words.txt").write_text("a red disc\na cat walks\n")
    (root / "comments.txt").write_text("# nothing here\n\n")
    (root / "broken.json").write_text("{not json")
    (root / "schedule.json").write_text(json.dumps([{"prompt": "a red disc", "seconds": 1}, {"prompt": "a blue ring"}]))
    (root / "not_a_list.json").write_text(json.dumps({"prompt": 3}))
    out = root / "run.mp4"
    assert main(["generate", "--latent-frames", "6", "--out", str(out), "--checkpoint-every", "1",
                 "--no-progress"]) == 0
    (root / "many").mkdir()
    other = {"settings": {"policy": "full"}, "settings_hash": "0" * 64}  # a generate-many folder of other settings
    (root / "many" / "manifest.json").write_text(json.dumps(other))
    return root


def snapshot(*roots: Path) -> dict[str, tuple]:
    seen = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            key = str(path)
            if path.is_symlink():
                seen[key] = ("link", os.readlink(path))
            elif path.is_dir():
                seen[key] = ("dir",)
            else:
                seen[key] = ("file", path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return seen


@pytest.fixture
def readonly(sandbox, monkeypatch):
    """``sandbox/readonly`` answers as a read-only folder, ``sandbox/unreadable*`` as files without read
    permission (what ``os.access`` says for another user's file or a read-only mount, root included)."""
    real = os.access
    ro, unreadable = str(sandbox / "readonly"), str(sandbox / "unreadable")

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and os.path.abspath(path).startswith(ro):
            return False
        if mode & os.R_OK and os.path.abspath(path).startswith(unreadable):
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


# --------------------------------------------------------------------------- run-directory mutations
def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def _write_manifest(run: Path, data: dict) -> None:
    (run / "manifest.json").write_text(json.dumps(data))


def _edit(run: Path, fn) -> None:
    data = _manifest(run)
    fn(data)
    _write_manifest(run, data)


def _rehash(data: dict) -> None:
    from memrope.generate_options import settings_hash

    data["settings_hash"] = settings_hash(data["settings"], length=False)


def _flip_state_byte(run: Path) -> None:
    path = run / _manifest(run)["state"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _segments_link_out(run: Path) -> None:
    outside = run.parent / "elsewhere"
    shutil.move(run / "segments", outside)
    (run / "segments").symlink_to(outside, target_is_directory=True)


def _state_link_out(run: Path) -> None:
    name = _manifest(run)["state"]
    outside = run.parent / "elsewhere.safetensors"
    shutil.move(run / name, outside)
    (run / name).symlink_to(outside)


def _edit_chunk_log(run: Path) -> None:
    path = run / "chunks.jsonl"
    path.write_bytes(path.read_bytes().replace(b'"index":0', b'"index":9', 1))


def _policy_and_hash(data: dict) -> None:
    data["settings"]["policy"] = "sliding_window"
    _rehash(data)


RUN_MUTATIONS = {
    "none": lambda run: None,
    "unfinished": lambda run: _edit(run, lambda d: d.update(complete=False)),
    "manifest not json": lambda run: (run / "manifest.json").write_text("{not json"),
    "manifest version 99": lambda run: _edit(run, lambda d: d.update(version=99)),
    "manifest missing a key": lambda run: _edit(run, lambda d: d.pop("logs")),
    "state outside": lambda run: _edit(run, lambda d: d.update(state="../../outside.safetensors")),
    "state checksum": _flip_state_byte,
    "state missing": lambda run: (run / _manifest(run)["state"]).unlink(),
    "state link out": _state_link_out,
    "segments link out": _segments_link_out,
    "segment missing": lambda run: next((run / "segments").glob("seg_000000.*")).unlink(),
    "chunk log edited": _edit_chunk_log,
    "chunk log cut": lambda run: (run / "chunks.jsonl").write_bytes(b""),
    "settings edited": lambda run: _edit(run, lambda d: d["settings"].update(seed=5)),
    "settings edited, hash too": lambda run: _edit(run, _policy_and_hash),
    "counts disagree": lambda run: _edit(run, lambda d: d.update(chunks_done=1)),
}


# --------------------------------------------------------------------------- the cases
def generate_cases() -> list[Case]:
    S, T = "{S}", "{T}"
    ok_out = ("--out", f"{T}/v.mp4")
    base = ("generate", "--latent-frames", "3", "--no-progress")
    cases: list[Case] = []

    def gen(id, argv, pattern, out=True):
        cases.append(Case(f"generate: {id}", (*base, *argv, *(ok_out if out else ())), pattern))

    # destinations that cannot be written
    bad_dest = {"parent is a file": f"{S}/afile.txt/x", "read-only folder": f"{S}/readonly/x"}
    for kind, stem in bad_dest.items():
        gen(f"--out {kind}", ("--out", stem + ".mp4"), r"--out .*(is a file, not a folder|not writable)", out=False)
        gen(f"--stats {kind}", ("--stats", stem + ".json"), r"--stats .*(is a file, not a folder|not writable)")
        gen(f"--run-dir {kind}", ("--checkpoint-every", "1", "--run-dir", stem + ".run"),
            r"--run-dir .*(is a file, not a folder|not writable)")
    gen("--out is a folder", ("--out", f"{S}/folder"), r"--out must name a \.mp4 file", out=False)
    gen("--stats is a folder", ("--stats", f"{S}/folder"), r"--stats .*folder is a folder")
    gen("--run-dir is a file", ("--checkpoint-every", "1", "--run-dir", f"{S}/afile.txt"), r"--run-dir .* is a file")
    gen("--run-dir holds a run", ("--checkpoint-every", "1", "--run-dir", f"{S}/run.mp4.run"), r"already holds a run")
    gen("--stats is --out", ("--stats", f"{T}/v.mp4"), r"--stats and --out name the same file")
    # input files of the wrong kind
    for kind, path, pattern in (("missing", f"{S}/nope.json", "does not exist"),
                                ("a folder", f"{S}/folder", "does not exist"),
                                ("not JSON", f"{S}/broken.json", "not valid JSON"),
                                ("not a list", f"{S}/not_a_list.json", "expected a list"),
                                ("binary", f"{S}/binary.bin", "is not a text file"),
                                ("unreadable", f"{S}/unreadable.txt", "cannot be read")):
        gen(f"--schedule {kind}", ("--schedule", path), pattern)
    # bad numbers
    for option, values in (("--latent-frames", ("x", "0", "-3", "1.5")), ("--duration", ("x", "0", "-1", "nan", "inf")),
                           ("--seed", ("x", "1.5")), ("--chunk-frames", ("0", "x")), ("--fps", ("0", "-16")),
                           ("--checkpoint-every", ("0", "y")), ("--crf", ("-1", "52", "x"))):
        for value in values:
            argv = (*base[:1], "--no-progress", option, value, *ok_out)
            cases.append(Case(f"generate: {option} {value}", argv, rf"argument {option}"))
    gen("--latent-frames not whole chunks", ("--latent-frames", "10"), r"multiple of the chunk \(3\); use 9 or 12")
    # unknown names
    for option, value, pattern in (("--policy", "nope", "unknown cache policy 'nope'"),
                                   ("--noise", "gpu", "argument --noise: invalid choice"),
                                   ("--pixels", "floor", "argument --pixels: invalid choice"),
                                   ("--policy-opt", "bogus", "must look like key=value"),
                                   ("--policy-opt", "cache_sise=12", r"unknown option\(s\) cache_sise"),
                                   ("--attention", "fastest", "argument --attention: invalid choice"),
                                   ("--model", "sd15", "argument --model: invalid choice"),
                                   ("--dtype", "float8", "argument --dtype: invalid choice"),
                                   ("--device", "bogus", "--device 'bogus' is not a device"),
                                   ("--device", "cuda:9", r"--device cuda:9 requested but this machine has \d+ CUDA"),
                                   ("--decode-device", "cuda:7", r"--decode-device cuda:7 requested"),
                                   ("--prompt", "a cat walks", r"does not know 'cat' \(nearest: .*'walks'"),
                                   ("--prompt", "a red disc[1s] | a purple cat", r"does not know 'purple'")):
        gen(f"{option} {value}", (option, value), pattern)
    # conflicting or incomplete options
    for argv, pattern in ((("--duration", "2"), "argument --duration: not allowed with argument --latent-frames"),
                          (("--prompt", "a red disc", "--schedule", f"{S}/schedule.json"), "not allowed with"),
                          (("--crf", "10", "--lossless"), "--crf sets H.264 quality and --lossless writes FFV1"),
                          (("--lossless",), r"--out must name a \.mkv file"),
                          (("--run-dir", f"{T}/r"), "--run-dir needs --checkpoint-every"),
                          (("--prompts", f"{S}/prompts.txt"), "makes one video"),
                          (("--prompt", "a red disc[60s] | a blue ring[5s]"), r"only \d+ chunks"),
                          (("--checkpoint", f"{S}/afile.txt"), "--checkpoint needs --model"),
                          (("--height", "64", "--width", "64"), "--height, --width need --model"),
                          (("--wan-dir", f"{S}/folder", "--no-ema"), "--wan-dir, --no-ema need --model"),
                          (("--prompt-cache", f"{T}/cache"), "--prompt-cache needs --model"),
                          (("--lora-mode", "unmerged"), "--lora-mode needs --model"),
                          (("--model", "self-forcing"), "needs --checkpoint and --wan-dir"),
                          (("--model", "self-forcing", "--checkpoint", f"{S}/afile.txt", "--wan-dir", f"{S}/nope"),
                           "no such folder")):
        gen(" ".join(a.replace(S, "").replace(T, "") for a in argv), argv, pattern)
    cases.append(Case("generate: no --out", base, "--out is required"))
    cases.append(Case("generate: .mkv without --lossless", (*base, "--out", f"{T}/v.mkv"), r"add --lossless"))
    return cases


def resume_cases() -> list[Case]:
    cases = []
    rd = "{R}"
    for name, pattern in (("manifest not json", "is not valid JSON"),
                          ("manifest version 99", "is not a memrope manifest"),
                          ("manifest missing a key", "'logs' must record"),
                          ("state outside", "outside the run directory"),
                          ("state checksum", "does not match the checksum"),
                          ("state missing", "has no saved state"),
                          ("state link out", "link that leads outside the run directory"),
                          ("segments link out", "link that leads outside the run directory"),
                          ("segment missing", "names segment seg_000000.mp4, which is missing"),
                          ("chunk log edited", "does not match its checkpoint"),
                          ("chunk log cut", "is shorter"),
                          ("settings edited", "do not match their recorded hash"),
                          ("settings edited, hash too", "saved state does not match its run"),
                          ("counts disagree", "its logs hold")):
        cases.append(Case(f"resume: {name}", ("generate", "--resume", rd, "--no-progress"), pattern, setup=name))
    for argv, pattern in ((("--policy", "sliding_window"), r"--policy \(\"sliding_window\"; the run has \"memrope\"\)"),
                          (("--seed", "3"), r"--seed \(3; the run has 0\)"),
                          (("--prompt", "a blue ring"), r"--prompt \("),
                          (("--checkpoint-every", "5"), r"--checkpoint-every \(5; the run has 1\)"),
                          (("--crf", "30"), r"--crf \("), (("--fps", "8"), r"--fps \(8"),
                          (("--chunk-frames", "1"), r"--chunk-frames \(1"),
                          (("--noise", "reference"), r"--noise \(\"reference\"; the run has \"chunk\"\)"),
                          (("--pixels", "round"), r"--pixels \(\"round\"; the run has \"truncate\"\)"),
                          (("--policy", "full", "--seed", "2"), r"--policy .*; --seed .*Remove these options"),
                          (("--run-dir", "{T}/x"), "--run-dir conflicts with --resume"),
                          (("--latent-frames", "3"), "a run cannot be shortened"),
                          (("--out", "{T}/v.mkv"), r"--out must name a \.mp4 file"),
                          (("--stats", "{S}/afile.txt/s.json"), "is a file, not a folder")):
        cases.append(Case(f"resume: {' '.join(argv)}", ("generate", "--resume", rd, "--no-progress", *argv),
                          pattern, setup="unfinished"))
    for path, pattern in (("{S}/nope.run", "no such folder"), ("{S}/afile.txt", "no such folder"),
                          ("{S}/folder", "no manifest.json")):
        cases.append(Case(f"resume: not a run ({path[4:]})", ("generate", "--resume", path, "--no-progress"),
                          rf"is not a memrope run directory \({pattern}\)"))
    return cases


def other_cases() -> list[Case]:
    S, T = "{S}", "{T}"
    cases = []
    # eval
    ev = ("eval", f"{S}/video.mp4", "--out", f"{T}/report", "--no-progress")
    for video, pattern in ((f"{S}/nope.mp4", "does not exist"), (f"{S}/folder", "is not a file"),
                           (f"{S}/unreadable.mp4", "cannot be read"),
                           (f"{S}/text.mp4", "is not a readable video"),
                           (f"{S}/binary.bin", "is not a readable video")):
        cases.append(Case(f"eval: video {Path(video).name}", ("eval", video, "--out", f"{T}/report"), pattern))
    for out, pattern in ((f"{S}/afile.txt", "is a file, not a folder"), (f"{S}/afile.txt/r", "is a file, not a folder"),
                         (f"{S}/readonly/r", "not writable")):
        cases.append(Case(f"eval: --out {out[4:]}", ("eval", f"{S}/video.mp4", "--out", out), rf"--out .*{pattern}"))
    for option, value in (("--segment-seconds", "0"), ("--segment-seconds", "x"), ("--feature-fps", "-1"),
                          ("--seam-period", "0"), ("--max-seconds", "0")):
        cases.append(Case(f"eval: {option} {value}", (*ev, option, value), rf"argument {option}"))
    cases.append(Case("eval: --labels count", (*ev, "--labels", "a,b"), r"--labels: got 2 values for 1 videos"))
    cases.append(Case("eval: --prompt-ids count", (*ev, "--prompt-ids", "a,b"), r"--prompt-ids: got 2 values"))
    cases.append(Case("eval: no video", ("eval", "--out", f"{T}/r"), "the following arguments are required: VIDEO"))
    # bench
    bench = ("bench", "--config", "tiny", "--latent", "4x4", "--chunks", "3", "--warmup", "1", "--device", "cpu")
    for argv, pattern in ((("--policies", "nope"), "unknown cache policy 'nope'"),
                          (("--policies", ","), "names no policy"),
                          (("--config", "huge"), "argument --config: invalid choice"),
                          (("--chunks", "0"), "argument --chunks"), (("--chunks", "x"), "argument --chunks"),
                          (("--warmup", "-1"), "argument --warmup"), (("--warmup", "3"), r"--chunks \(3\) must exceed"),
                          (("--latent", "0x4"), "argument --latent"), (("--latent", "big"), "argument --latent"),
                          (("--matmul-n", "0"), "argument --matmul-n"), (("--device", "cuda:99"), "requested but"),
                          (("--device", "bogus"), "bogus"), (("--dtype", "int8"), "argument --dtype: invalid choice"),
                          (("--order", "random"), "argument --order"), (("--decoder", "vq"), "argument --decoder"),
                          (("--attention", "x"), "argument --attention"),
                          (("--out", f"{S}/afile.txt/b.json"), "is a file, not a folder"),
                          (("--out", f"{S}/folder"), "is a folder; name a file"),
                          (("--out", f"{S}/readonly/b.json"), "not writable")):
        cases.append(Case(f"bench: {' '.join(argv).replace(S, '')}", (*bench, *argv), pattern))
    # generate-many
    many = ("generate-many", "--prompts", f"{S}/prompts.txt", "--out-dir", f"{T}/many")
    for prompts, pattern in ((f"{S}/nope.txt", "does not exist"), (f"{S}/folder", "does not exist or is not a file"),
                             (f"{S}/comments.txt", "holds no prompt"), (f"{S}/bad_words.txt", r"line 2: .*'cat'"),
                             (f"{S}/broken.json", "not valid JSON"), (f"{S}/not_a_list.json", "expected a list"),
                             (f"{S}/binary.bin", "not a text file"), (f"{S}/unreadable.txt", "cannot be read")):
        cases.append(Case(f"generate-many: --prompts {Path(prompts).name}",
                          ("generate-many", "--prompts", prompts, "--out-dir", f"{T}/many"), pattern))
    for out, pattern in ((f"{S}/afile.txt", "is a file, not a folder"), (f"{S}/afile.txt/m", "is a file, not a folder"),
                         (f"{S}/readonly/m", "not writable"), (f"{S}/many", "holds videos made with other settings")):
        cases.append(Case(f"generate-many: --out-dir {out[4:]}",
                          ("generate-many", "--prompts", f"{S}/prompts.txt", "--out-dir", out, "--", "--latent-frames",
                           "3"), pattern))
    for argv, pattern in ((("--", "--policy", "nope"), "unknown cache policy"),
                          (("--", "--seed", "1"), "--seed is set"),
                          (("--", "--out", "x.mp4"), "--out is set per prompt"),
                          (("--", "--latent-frames", "0"), "argument --latent-frames"),
                          (("--", "--checkpoint", "x.pt"), "--checkpoint needs --model"),
                          (("--", "--latent-frames", "10"), "multiple of the chunk"),
                          (("--seed", "x"), "argument --seed"), (("--backend", "tcp"), "argument --backend"),
                          (("--policy", "full"), "unrecognized arguments")):
        cases.append(Case(f"generate-many: {' '.join(argv)}", (*many, *argv), pattern))
    # compare
    cmp = ("compare", "--out", f"{T}/cmp", "--latent-frames", "3", "--no-progress")
    for argv, pattern in ((("--policies", "nope"), r"unknown policies \['nope'\]"),
                          (("--prompts", f"{S}/nope.txt"), "does not exist"),
                          (("--prompts", f"{S}/bad_words.txt"), "does not know 'cat'"),
                          (("--prompts", f"{S}/unreadable.txt"), "cannot be read"),
                          (("--prompt", "a cat"), "does not know 'cat'"), (("--seeds", "0"), "argument --seeds"),
                          (("--segment-seconds", "0"), "argument --segment-seconds")):
        cases.append(Case(f"compare: {' '.join(argv).replace(S, '')}", (*cmp, *argv), pattern))
    for out in (f"{S}/afile.txt", f"{S}/afile.txt/c", f"{S}/readonly/c"):
        cases.append(Case(f"compare: --out {out[4:]}", ("compare", "--out", out, "--latent-frames", "3"), r"--out"))
    cases.append(Case("compare: --duration 0", ("compare", "--out", f"{T}/c", "--duration", "0"),
                      "argument --duration"))
    # encode-prompts (the Wan folder needed for the cache checks is the battery's wan_dir case below)
    enc = ("encode-prompts", "--wan-dir", f"{S}/folder")
    for argv, pattern in ((("--prompt", "x"), "no Wan VAE found"),
                          (("--prompts", f"{S}/nope.txt"), "does not exist"),
                          (("--prompts", f"{S}/comments.txt"), "holds no prompt"),
                          (("--prompts", f"{S}/unreadable.txt"), "cannot be read"),
                          (("--schedule", f"{S}/broken.json"), "not valid JSON"),
                          (("--prompt", "x", "--device", "bogus"), "bogus"),
                          (("--prompt", "x", "--dtype", "float16"), "argument --dtype"),
                          (("--prompt", "x", "--prompts", f"{S}/prompts.txt"), "not allowed with")):
        cases.append(Case(f"encode-prompts: {' '.join(argv).replace(S, '')}", (*enc, *argv), pattern))
    cases.append(Case("encode-prompts: --wan-dir missing",
                      ("encode-prompts", "--wan-dir", f"{S}/nope", "--prompt", "x"),
                      "no such folder"))
    # the simple commands and the top level
    for argv, pattern in ((("policies", "--all"), "unrecognized arguments"), (("vocabulary", "x"), "unrecognized"),
                          (("nonsense",), "argument COMMAND: invalid choice"), ((), "required: COMMAND")):
        cases.append(Case(f"top level: {' '.join(argv) or '(nothing)'}", argv, pattern))
    return cases


CASES = generate_cases() + resume_cases() + other_cases()


def test_the_battery_is_large_and_covers_every_subcommand():
    commands = {c.argv[0] for c in CASES if c.argv}
    assert commands >= {"generate", "eval", "bench", "generate-many", "compare", "encode-prompts", "policies",
                        "vocabulary"}
    assert len(CASES) > 150 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, sandbox, readonly, tmp_path, capsys, monkeypatch):
    mine = tmp_path / "case"
    mine.mkdir()
    run = tmp_path / "run.mp4.run"
    if case.setup is not None:
        shutil.copytree(sandbox / "run.mp4.run", run)
        RUN_MUTATIONS[case.setup](run)
    argv = [a.replace("{S}", str(sandbox)).replace("{T}", str(mine)).replace("{R}", str(run)) for a in case.argv]
    monkeypatch.chdir(mine)
    before = snapshot(sandbox, tmp_path)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: the parser's one-line error
        code = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == case.status, err
    assert "Traceback" not in err
    assert 1 <= len(lines) <= MAX_LINES and all(line.startswith("memrope") for line in lines), err
    assert re.search(case.pattern, err), err
    assert snapshot(sandbox, tmp_path) == before, "files were created, changed or removed"


# --------------------------------------------------------------------------- checks that need setting up
def test_too_little_disk_for_one_checkpoint(tmp_path, capsys, monkeypatch):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 20, 10 << 20, 4096))
    out = tmp_path / "v.mp4"
    before = snapshot(tmp_path)
    assert main(["generate", "--latent-frames", "6", "--out", str(out), "--checkpoint-every", "1",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"not enough free space for one checkpoint of this run: it needs about \d+\.\d MB, "
                     r"0\.0 MB are free", err), err
    assert snapshot(tmp_path) == before


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    import torch

    from .models.tiny_wan_files import TINY_REAL, random_wan, self_forcing_dict, write_wan_dir

    root = tmp_path_factory.mktemp("wan")
    m = random_wan(TINY_REAL, 0)
    torch.save(self_forcing_dict(m, m, m), root / "sf.pt")
    return root / "sf.pt", write_wan_dir(root / "Wan2.1-T2V-1.3B", "original")


def test_read_only_wan_dir_prompt_cache_is_one_line(wan, tmp_path, capsys, monkeypatch):
    """The default prompt cache lives in --wan-dir, often a read-only shared model store."""
    from .models.tiny_wan_files import PIXELS

    ckpt, wan_dir = wan
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if mode & os.W_OK and
                        str(os.path.abspath(p)).startswith(str(wan_dir)) else real(p, mode, *a, **k))
    before = snapshot(wan_dir, tmp_path)
    for argv in (["generate", "--model", "self-forcing", "--checkpoint", str(ckpt), "--wan-dir", str(wan_dir),
                  "--height", str(PIXELS), "--width", str(PIXELS), "--latent-frames", "3", "--prompt", "a cat",
                  "--out", str(tmp_path / "v.mp4"), "--no-progress"],
                 ["encode-prompts", "--wan-dir", str(wan_dir), "--prompt", "a cat"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "prompt cache" in err and "not writable" in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1
    assert snapshot(wan_dir, tmp_path) == before


def test_encode_prompts_reads_one_prompt_per_line_as_its_help_says(wan, tmp_path, capsys):
    ckpt, wan_dir = wan
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat walks\n# a comment\na dog sleeps[2s] | a dog wakes\n")
    cache = tmp_path / "cache"
    assert main(["encode-prompts", "--wan-dir", str(wan_dir), "--prompts", str(prompts), "--prompt-cache",
                 str(cache)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert sorted(line.split("\t")[1] for line in lines) == ["a cat walks", "a dog sleeps", "a dog wakes"]
    assert len(list(cache.iterdir())) == 3

