"""The options that reproduce the reference pipelines at the command line: ``--noise``, ``--pixels``,
``--lora-mode``: named in the manifest and the stats, refused when misspelt, resumable."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from memrope.cli import main
from memrope.generate_options import (
    LORA_MODE_CHOICES,
    NOISE_CHOICES,
    PIXEL_CHOICES,
    add_generate_arguments,
    request_from_args,
)
from memrope.run import generate

CHUNKS = 8


def argv(out: Path, *extra: str) -> list[str]:
    return ["generate", "--latent-frames", str(3 * CHUNKS), "--out", str(out), "--no-progress", "--seed", "3",
            "--checkpoint-every", "2", "--save-latents", *extra]


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def latents(run_dir: Path) -> torch.Tensor:
    files = sorted((run_dir / "segments").glob("*.latents.safetensors"))
    return torch.cat([load_file(str(f))["latents"] for f in files], dim=2)


def parse(args: list[str]) -> tuple:
    """The settings and outputs ``memrope generate ARGS`` would run."""
    return request_from_args(add_generate_arguments(argparse.ArgumentParser()).parse_args(args[1:]))


def chunk_hashes(run_dir: Path) -> list[str]:
    return [json.loads(line)["frames_sha256"] for line in (run_dir / "chunks.jsonl").read_bytes().splitlines()]


def test_choices_are_the_libraries():
    from memrope.generate import NOISE_MODES
    from memrope.models.lora_linear import LORA_MODES
    from memrope.models.pixels import PIXEL_MODES

    assert (NOISE_CHOICES, PIXEL_CHOICES, LORA_MODE_CHOICES) == (NOISE_MODES, PIXEL_MODES, LORA_MODES)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "v.mp4"
    stats = out.with_suffix(".json")
    assert main(argv(out, "--noise", "reference", "--policy", "memrope_reference", "--stats", str(stats))) == 0
    return out, Path(str(out) + ".run"), json.loads(stats.read_text())


def test_manifest_and_stats_name_the_choices(reference_run):
    _, run_dir, stats = reference_run
    settings = manifest(run_dir)["settings"]
    assert settings["noise"] == "reference"
    assert settings["model"]["pixels"] == "truncate" and settings["model"]["lora_mode"] == "merged"
    assert (stats["noise"], stats["pixels"], stats["lora_mode"]) == ("reference", "truncate", None)  # no LoRA here
    assert stats["run"]["generation"]["noise"] == "reference"
    assert stats["run"]["generation"]["noise_frames"] == 3 * CHUNKS


def test_reference_noise_resumes_exactly_after_a_crash(reference_run, tmp_path):
    _, straight, _ = reference_run
    out = tmp_path / "v.mp4"
    settings = parse(argv(out, "--noise", "reference", "--policy", "memrope_reference"))

    def crash(stats):
        if stats["index"] == 4:  # after the checkpoint at 4 chunks, before the one at 6
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        generate(*settings, progress=False, on_chunk=crash)
    run_dir = Path(str(out) + ".run")
    assert manifest(run_dir)["chunks_done"] == 4
    assert main(["generate", "--resume", str(run_dir), "--no-progress"]) == 0
    assert torch.equal(latents(run_dir), latents(straight))
    per_chunk = tmp_path / "chunk.mp4"
    assert main(argv(per_chunk, "--policy", "memrope_reference")) == 0
    assert not torch.equal(latents(Path(str(per_chunk) + ".run")), latents(straight))


def test_pixels_choice_and_legacy_manifests_keep_rounding(tmp_path):
    """A run directory made before --pixels existed was rounded: resuming it keeps rounding."""
    rounded = tmp_path / "round.mp4"
    assert main(argv(rounded, "--pixels", "round")) == 0
    truncated = tmp_path / "trunc.mp4"
    assert main(argv(truncated)) == 0
    hashes = lambda out: chunk_hashes(Path(str(out) + ".run"))  # noqa: E731
    assert hashes(rounded) != hashes(truncated)
    assert torch.equal(latents(Path(str(rounded) + ".run")), latents(Path(str(truncated) + ".run")))

    legacy = tmp_path / "legacy.mp4"
    settings = argv(legacy, "--pixels", "round")

    def crash(stats):
        if stats["index"] == 2:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        generate(*parse(settings), progress=False, on_chunk=crash)
    run_dir = Path(str(legacy) + ".run")
    _as_version_1(run_dir)
    assert main(["generate", "--resume", str(run_dir), "--no-progress"]) == 0
    assert hashes(legacy) == hashes(rounded)


def _as_version_1(run_dir: Path) -> None:
    """Rewrite a run directory as the memrope before these options wrote it: manifest version 1 (segments and
    statistics inside it), no noise / pixels / LoRA-mode settings."""
    data = manifest(run_dir)
    settings = {k: v for k, v in data["settings"].items() if k not in ("noise", "video", "attention_requested")}
    settings["model"] = {k: v for k, v in settings["model"].items() if k not in ("pixels", "lora_mode")}
    settings.update(out=str(run_dir.with_suffix("")), stats=None, run_dir=str(run_dir), prompt=None, prompts_file=None)
    lines = lambda name: [json.loads(x) for x in (run_dir / name).read_bytes().splitlines()]  # noqa: E731
    marks = {name: mark["lines"] for name, mark in data["logs"].items()}
    v1 = {"version": 1, "settings": settings, "chunks_done": data["chunks_done"], "complete": False,
          "segments": lines("segments.jsonl")[:marks["segments.jsonl"]],
          "chunk_stats": lines("chunks.jsonl")[:marks["chunks.jsonl"]], "state": data["state"]}
    (run_dir / "manifest.json").write_text(json.dumps(v1))
    (run_dir / "segments.jsonl").unlink()
    (run_dir / "chunks.jsonl").unlink()


@pytest.mark.parametrize("option,value", [("--noise", "gpu"), ("--pixels", "floor"), ("--lora-mode", "fused")])
def test_bad_choices_are_usage_errors(tmp_path, capsys, option, value):
    out = tmp_path / "v.mp4"
    with pytest.raises(SystemExit) as exc:
        main(["generate", option, value, "--out", str(out)])
    assert exc.value.code == 2
    assert f"argument {option}: invalid choice: '{value}'" in capsys.readouterr().err
    assert not out.exists()
