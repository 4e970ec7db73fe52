"""The videos of a study: one resumable run directory per (base, policy, prompt, seed), named by its settings.

A video's name carries the hash of every setting that defines its frames except its length
(``generate_options.settings_hash(settings, length=False)``): two videos of other settings never share
a name, and the same video at a longer horizon is the same run directory, extended (its first chunks
are the very same: the chunk noise is a function of (seed, chunk), and resuming is exact). Each video
is ``memrope generate --checkpoint-every N`` into ``<name>.run`` with the video assembled as
``<name>.mp4``; a rerun of the study:

- skips a video whose done-marker records the same settings and length (``sharding.is_done``);
- continues an interrupted one from its last checkpoint (``generate --resume``);
- extends a finished one that is shorter than the longest horizon now asked for;
- keeps a finished one that is already long enough (a horizon was removed).

The videos are sharded over torchrun ranks by :func:`memrope.sharding.run_sharded`, the engine of
``generate-many``; every rank appends what it did to ``logs/rank<R>.jsonl``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..generate_options import Outputs, request_from_args, settings_hash, video_suffix
from ..prompt_suites import SuitePrompt
from ..session import MANIFEST
from .study import Base, PolicySpec, Study, generate_parser

HASH_CHARS = 12
VIDEOS = "videos"
LOGS = "logs"


class GenerateStopped(Exception):
    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


@dataclass(frozen=True)
class Job:
    """One video of the study."""

    base: Base
    policy: PolicySpec
    prompt: SuitePrompt
    seed: int

    @property
    def unit(self) -> str:
        """The paired unit: the same (prompt, seed) under every policy."""
        return f"{self.prompt.id}_s{self.seed}"


def jobs(study: Study) -> list[Job]:
    return [Job(b, p, q, s) for b in study.bases for p in study.policies for q in study.prompts for s in study.seeds]


def length_argv(study: Study) -> list[str]:
    longest = study.horizons[-1]
    if longest.latent_frames is not None:
        return ["--latent-frames", str(longest.latent_frames)]
    return ["--duration", repr(longest.seconds)]


def job_settings(study: Study, job: Job, out: Path | None = None) -> tuple[dict[str, Any], Outputs]:
    """The video's generate settings (validated by generate's own parser) and its outputs."""
    options = [x for o in job.policy.options for x in ("--policy-opt", o)]
    argv = [*job.base.argv, "--policy", job.policy.policy, *options,
            "--seed", str(job.seed), "--prompt", "placeholder", *length_argv(study),
            "--checkpoint-every", str(study.checkpoint_every), "--no-progress",
            "--out", str(out) if out is not None else "placeholder" + (".mkv" if "--lossless" in job.base.argv
                                                                        else ".mp4")]
    settings, outputs = request_from_args(generate_parser(f"base {job.base.name}").parse_args(argv))
    settings["schedule"] = [vars(s) for s in job.prompt.segments]
    return settings, outputs


def video_name(study: Study, job: Job) -> str:
    settings, _ = job_settings(study, job)
    key = settings_hash(settings, length=False)[:HASH_CHARS]
    return f"{job.base.name}__{job.policy.label}__{job.unit}_{key}{video_suffix(settings)}"


def chunks_needed(settings: dict[str, Any], stride: int) -> int:
    from ..run import DEFAULT_SECONDS, latent_frames_for

    chunk = settings["chunk_frames"]
    if settings.get("latent_frames") is not None:
        return settings["latent_frames"] // chunk
    return latent_frames_for(settings.get("duration") or DEFAULT_SECONDS, settings["fps"], stride, chunk) // chunk


def requested(saved: dict[str, Any]) -> dict[str, Any]:
    """A run's saved settings as they were asked for: ``run.prepare`` records the kernel an ``--attention``
    request resolved to (and the request as ``attention_requested``)."""
    out = dict(saved)
    if "attention_requested" in out:
        out["attention"] = out.pop("attention_requested")
    return out


class StudyVideos:
    """The study's videos as the work items of ``run_sharded``."""

    def __init__(self, study: Study, progress: bool = False):
        self.study, self.progress = study, progress
        self.jobs = jobs(study)
        self.names = [video_name(study, j) for j in self.jobs]
        self.dir = study.out / VIDEOS

    def keys(self) -> list[str]:
        return list(self.names)

    def output_name(self, index: int, key: str) -> str:
        return self.names[index]

    def identity(self, index: int, key: str) -> str:
        return settings_hash(job_settings(self.study, self.jobs[index])[0])

    def path(self, index: int) -> Path:
        return self.dir / self.names[index]

    def _log(self, record: dict[str, Any]) -> None:
        rank = os.environ.get("RANK", "0")
        log = self.study.out / LOGS / f"rank{rank}.jsonl"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def generate_one(self, index: int, key: str, path: Path) -> None:
        import sys

        from ..run import generate, open_run

        job = self.jobs[index]
        settings, outputs = job_settings(self.study, job, path)
        run_dir = path.with_name(path.name + ".run")
        outputs = Outputs(outputs.out, None, run_dir)
        print(f"memrope compare: video {index + 1} of {len(self.jobs)}: {job.policy.label}, base {job.base.name}, "
              f"prompt {job.prompt.id}, seed {job.seed}", file=sys.stderr)
        need = chunks_needed(settings, self.study.clock.stride)
        chunks = [0]
        on_chunk = lambda stats: chunks.__setitem__(0, chunks[0] + 1)  # noqa: E731
        if (run_dir / MANIFEST).is_file():
            opened = open_run(run_dir)
            ours = settings_hash(settings, length=False)
            if settings_hash(requested(opened.manifest.settings), length=False) != ours:
                raise UserError(f"{run_dir} holds a run of other settings under this study's name for it (edited "
                                f"by hand?); move it away")
            before = opened.manifest.chunks_done
            if opened.manifest.complete and before >= need:
                action = "kept"
                if not path.is_file():
                    opened.run.assemble(opened.manifest, path)
                status = 0
            else:
                action = "extended" if opened.manifest.complete else "continued"
                length = {k: settings[k] for k in ("latent_frames", "duration") if settings[k] is not None}
                status = generate(opened.manifest.settings, outputs, resume=opened, length=length,
                                  progress=self.progress, on_chunk=on_chunk)
        else:
            before, action = 0, "new"
            status = generate(settings, outputs, progress=self.progress, on_chunk=on_chunk)
        self._log({"video": path.name, "action": action, "chunks_before": before, "chunks_generated": chunks[0],
                   "status": status})
        if status:
            raise GenerateStopped(status)


def check_videos_dir(study: Study) -> None:
    """The output folder writable; nothing else is checked against it (names carry their settings)."""
    from ..errors.paths import check_output_dir

    check_output_dir(study.out, "--out")


def generate_videos(study: Study, progress: bool = False):
    """This rank's share of the study's videos (a ``sharding.ShardReport``)."""
    from ..sharding import run_sharded

    videos = StudyVideos(study, progress)
    return run_sharded(videos.keys(), videos.dir, videos.generate_one, output_name=videos.output_name,
                       identity=videos.identity, manifest_extra={"study": study.name})
