"""Run directories (manifest version 2): confinement, the constant-size manifest, logs, migration.

The property tests forge manifests the way an attacker who can edit a run directory would: every
checksum and log mark is recomputed to match, so only the confinement rules stand between the
manifest and a path outside the directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memrope.chunk_log import JsonLinesLog
from memrope.cli import main
from memrope.errors import UserError
from memrope.run import open_run
from memrope.session import (
    CHUNKS_LOG,
    MANIFEST,
    SEGMENTS_LOG,
    RunDirectory,
    SessionError,
    file_sha256,
    inside,
)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("made")
    out = root / "v.mp4"
    assert main(["generate", "--latent-frames", "9", "--out", str(out), "--checkpoint-every", "1", "--no-progress",
                 "--stats", str(root / "s.json")]) == 0
    return root, Path(str(out) + ".run")


# --------------------------------------------------------------------------- confinement
TRICKY = ["..", "../x", "/etc/passwd", "segments/../../x", "./seg_000000.mp4", "seg_000000.mp4/..", "a//b",
          "state_000001.safetensors/../../../x", "\\..\\x", "seg_000000.mp4\x00", "~/x", "segments/./seg"]
names = st.one_of(st.text(max_size=40), st.sampled_from(TRICKY),
                  st.builds(lambda a, b: a + b, st.sampled_from(["", "../", "/", "segments/", "./", "../../"]),
                            st.sampled_from(["seg_000000.mp4", "seg_000001.mkv", "state_000003.safetensors", "x"])))


@given(names)
@settings(max_examples=300, deadline=None)
def test_inside_never_leaves_the_root(name):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "run"
        root.mkdir()
        (Path(tmp) / "outside").mkdir()
        (root / "out").symlink_to(Path(tmp) / "outside", target_is_directory=True)
        try:
            path = inside(root, name)
        except SessionError:
            return
        assert path.resolve().is_relative_to(root.resolve())


def _forge(run: Path, state: str | None = None, segment_names: dict[int, str] | None = None) -> None:
    """Rewrite the logs and the manifest with the given names and every mark and checksum recomputed."""
    data = json.loads((run / MANIFEST).read_text())
    records = [json.loads(line) for line in (run / SEGMENTS_LOG).read_bytes().splitlines()]
    for i, name in (segment_names or {}).items():
        records[i]["name"] = name
    log = JsonLinesLog(run / SEGMENTS_LOG).create()
    for record in records:
        log.append(record)
    data["logs"][SEGMENTS_LOG] = log.sync().to_json()
    log.close()
    if state is not None:
        data["state"] = state
        target = run / state if "\x00" not in state else None
        try:
            data["state_sha256"] = file_sha256(target) if target is not None and target.is_file() else "0" * 64
        except OSError:
            data["state_sha256"] = "0" * 64
    (run / MANIFEST).write_text(json.dumps(data))


LINKS = [None, "segments", "state", CHUNKS_LOG, SEGMENTS_LOG, "segment file"]


def _link_out(run: Path, what: str | None) -> bool:
    """Move ``what`` out of the run directory and leave a symlink to it; whether there was one to move."""
    if what is None:
        return False
    outside = run.parent / "outside"
    outside.mkdir(exist_ok=True)
    data = json.loads((run / MANIFEST).read_text())
    target = {"segments": run / "segments", "state": run / data["state"], CHUNKS_LOG: run / CHUNKS_LOG,
              SEGMENTS_LOG: run / SEGMENTS_LOG, "segment file": run / "segments" / "seg_000000.mp4"}[what]
    try:
        if not target.exists() or not target.resolve().is_relative_to(run.resolve()):
            return False
    except (OSError, ValueError):
        return False
    moved = outside / target.name
    shutil.move(target, moved)
    target.symlink_to(moved, target_is_directory=moved.is_dir())
    return True


@given(field=st.sampled_from(["state", "segment 0", "segment 2", "none"]), name=names, link=st.sampled_from(LINKS))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_forged_manifests_name_nothing_outside_the_run_directory(made, field, name, link):
    """Whatever a forged manifest says, either resuming refuses it with a one-line error or every file
    the run directory would read, write or delete lies inside it."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "v.mp4.run"
        shutil.copytree(made[1], run, symlinks=True)
        try:
            if field == "state":
                _forge(run, state=name)
            elif field != "none":
                _forge(run, segment_names={int(field[-1]): name})
        except (OSError, ValueError, UnicodeEncodeError):
            return  # a name the file system itself cannot hold
        linked = _link_out(run, link)
        try:
            opened = open_run(run)
        except UserError as e:
            assert "\n" not in str(e)
            return
        rd, manifest = opened.run, opened.manifest
        touched = [rd.file(MANIFEST), rd.file(SEGMENTS_LOG), rd.file(CHUNKS_LOG), rd.segments_dir,
                   rd.state_path(manifest.state)] + [rd.segment_path(s.name) for s in rd.segments(manifest)]
        root = run.resolve()
        assert all(p.resolve().is_relative_to(root) for p in touched)
        assert not linked  # every link out is refused


def test_a_resume_writes_only_inside_its_run_directory_and_the_derived_output(made, tmp_path, monkeypatch):
    """Writes of a resumed run: the run directory and OUT beside OUT.run, whatever the manifest says."""
    run = tmp_path / "v.mp4.run"
    shutil.copytree(made[1], run)
    data = json.loads((run / MANIFEST).read_text())
    data["settings"]["out"] = str(tmp_path / "elsewhere" / "evil.mp4")  # a version-1 field: not read
    data["settings"]["stats"] = str(tmp_path / "elsewhere" / "evil.json")
    (run / MANIFEST).write_text(json.dumps(data))
    from memrope.generate_options import settings_hash

    data["settings_hash"] = settings_hash(data["settings"], length=False)
    (run / MANIFEST).write_text(json.dumps(data))
    written = []
    real_open = open

    def spy(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            written.append(Path(file).resolve())
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    assert main(["generate", "--resume", str(run), "--latent-frames", "12", "--no-progress"]) == 0
    allowed = (run.resolve(), (tmp_path / "v.mp4").resolve())
    assert written and all(p.is_relative_to(allowed[0]) or p == allowed[1] or p.parent == tmp_path.resolve()
                           and p.name.startswith("v.mp4") for p in written), written
    assert not (tmp_path / "elsewhere").exists()


# --------------------------------------------------------------------------- constant size, logs
def test_manifest_is_constant_size_and_logs_hold_the_records(made, tmp_path):
    root, run = made
    data = json.loads((run / MANIFEST).read_text())
    assert data["version"] == 2 and data["chunks_done"] == 3 and data["segments"] == 3
    assert "chunk_stats" not in data and isinstance(data["segments"], int)
    chunks = [json.loads(line) for line in (run / CHUNKS_LOG).read_bytes().splitlines()]
    assert [c["index"] for c in chunks] == [0, 1, 2]
    stats = json.loads((root / "s.json").read_text())
    assert stats["chunks"] == chunks and stats["summary"]["chunks"] == 3
    # a longer run: the manifest grows only by the digits of its counters
    longer = tmp_path / "w.mp4"
    assert main(["generate", "--latent-frames", "60", "--out", str(longer), "--checkpoint-every", "1",
                 "--no-progress"]) == 0
    big = json.loads((tmp_path / "w.mp4.run" / MANIFEST).read_text())
    assert big["segments"] == 20
    assert abs(len(json.dumps(big)) - len(json.dumps(data))) < 40


def test_resume_cuts_the_logs_back_to_the_last_checkpoint(made, tmp_path):
    run = tmp_path / "v.mp4.run"
    shutil.copytree(made[1], run)
    data = json.loads((run / MANIFEST).read_text())
    data["complete"] = False
    (run / MANIFEST).write_text(json.dumps(data))
    committed = (run / CHUNKS_LOG).read_bytes()
    with open(run / CHUNKS_LOG, "ab") as f:  # a crash after logging chunk 3, before its checkpoint
        f.write(b'{"index":3,"half written"')
    with open(run / SEGMENTS_LOG, "ab") as f:
        f.write(b'{"name":"seg_000003.mp4","first_chunk":3,"chunks":1,"frames":3}\n')
    assert main(["generate", "--resume", str(run), "--latent-frames", "12", "--no-progress"]) == 0
    lines = (run / CHUNKS_LOG).read_bytes().splitlines()
    assert (run / CHUNKS_LOG).read_bytes().startswith(committed)
    assert [json.loads(line)["index"] for line in lines] == [0, 1, 2, 3]
    assert RunDirectory(run).load().chunks_done == 4


def test_version_1_run_directories_still_resume(made, tmp_path):
    """A run made by the previous memrope (statistics and segments inside the manifest) is converted."""
    run = tmp_path / "v.mp4.run"
    shutil.copytree(made[1], run)
    v2 = json.loads((run / MANIFEST).read_text())
    segments = [json.loads(line) for line in (run / SEGMENTS_LOG).read_bytes().splitlines()]
    chunks = [json.loads(line) for line in (run / CHUNKS_LOG).read_bytes().splitlines()]
    settings = {k: v for k, v in v2["settings"].items() if k not in ("video", "attention_requested")}
    settings.update(out=str(tmp_path / "v.mp4"), stats=None, run_dir=str(run), prompt=None, prompts_file=None)
    v1 = {"version": 1, "settings": settings, "chunks_done": 3, "complete": False, "segments": segments,
          "chunk_stats": chunks, "state": v2["state"]}
    (run / MANIFEST).write_text(json.dumps(v1))
    os.remove(run / SEGMENTS_LOG)
    os.remove(run / CHUNKS_LOG)
    assert main(["generate", "--resume", str(run), "--latent-frames", "12", "--no-progress"]) == 0
    now = RunDirectory(run).load()
    assert now.chunks_done == 4 and now.complete
    straight = tmp_path / "s.mp4"
    assert main(["generate", "--latent-frames", "12", "--out", str(straight), "--checkpoint-every", "1",
                 "--no-progress"]) == 0
    sha = lambda d: [json.loads(x)["frames_sha256"] for x in (d / CHUNKS_LOG).read_bytes().splitlines()]  # noqa: E731
    assert sha(run) == sha(tmp_path / "s.mp4.run")


def test_a_reference_noise_run_cannot_change_length(tmp_path, capsys):
    """--noise reference draws the whole video's initial noise first: a longer video has other noise from
    chunk 0 on, so extending the run could not equal a longer run; it is refused."""
    out = tmp_path / "v.mp4"
    assert main(["generate", "--latent-frames", "6", "--noise", "reference", "--out", str(out),
                 "--checkpoint-every", "1", "--no-progress"]) == 0
    run = tmp_path / "v.mp4.run"
    before = (run / MANIFEST).read_bytes()
    capsys.readouterr()
    assert main(["generate", "--resume", str(run), "--latent-frames", "9", "--no-progress"]) == 2
    assert "cannot be made longer or shorter" in capsys.readouterr().err
    assert (run / MANIFEST).read_bytes() == before
