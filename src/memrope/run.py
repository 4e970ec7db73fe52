"""One ``memrope generate`` run: settings -> model, policy, prompts -> chunk loop -> output.

Everything a run needs is a plain, JSON-serialisable ``settings`` dict, so a resumable run stores
it in its manifest and ``--resume DIR`` rebuilds the very same run. Two output sinks: a direct
fragmented MP4, or a run directory (segments + checkpoints, see :mod:`memrope.session`).

Stopping: SIGINT / SIGTERM set a flag; the current chunk is finished, the output flushed, a
checkpoint written (run directory) and the process exits 130, resumable. Non-finite latents stop
the run before the bad chunk is written, keeping the last good state (exit 3). A full disk is
reported with the state left at the last checkpoint (exit 3).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import RunFailure, UserError
from .session import Manifest, RunDirectory, Segment, SessionError, atomic_write_json

WARMUP_CHUNKS = 2  # chunks left out of the steady-state latency summary
# What a manifest written before these settings existed was made with (its run resumes the same way).
LEGACY_SETTINGS = {"noise": "chunk"}
LEGACY_MODEL_SETTINGS = {"pixels": "round", "lora_mode": "merged"}
DEFAULT_SECONDS = 10.0  # video length when neither a length nor a timed schedule is given
EXIT_INTERRUPTED = 130


def latent_frames_for(duration_s: float, fps: int, temporal_stride: int, chunk: int) -> int:
    """Smallest whole-chunk latent length whose video (1 + stride (T-1) frames) lasts >= duration."""
    frames = max(1, math.ceil(duration_s * fps))
    latent = math.ceil((frames - 1) / temporal_stride) + 1
    return math.ceil(latent / chunk) * chunk


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class StopFlag:
    """SIGINT/SIGTERM -> finish the chunk, then stop cleanly. A second SIGINT aborts at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        print(f"\nmemrope: {signal.Signals(signum).name}: finishing the current chunk, then saving",
              file=sys.stderr)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class Prepared:
    bundle: Any
    generator: Any
    n_chunks: int
    n_latent: int
    switches: dict
    schedule: Any
    starts: list[int]


def prepare(settings: dict[str, Any]) -> Prepared:
    """Validate everything and build the run; raises UserError before any output exists."""
    from .cache import make_policy
    from .cache.preflight import preflight
    from .generate import GenerationConfig, StreamingGenerator
    from .models.bundle import BundleOptions
    from .models.loading import load_bundle
    from .schedule import load_schedule, parse_inline, schedule_from_data

    for key, value in LEGACY_SETTINGS.items():
        settings.setdefault(key, value)
    for key, value in LEGACY_MODEL_SETTINGS.items():
        settings["model"].setdefault(key, value)
    try:
        policy = make_policy(settings["policy"], settings["policy_options"])
        bundle = load_bundle(BundleOptions(**settings["model"]))
        if settings.get("schedule") is not None:
            schedule = schedule_from_data(settings["schedule"], "saved schedule")
        elif settings.get("prompts_file"):
            schedule = load_schedule(settings["prompts_file"])
        else:
            schedule = parse_inline(settings["prompt"])
    except ValueError as e:  # includes WeightFileError: names the file and what was expected
        raise UserError(str(e)) from None
    if bundle.threads and next(bundle.model.parameters()).device.type == "cpu":
        torch.set_num_threads(bundle.threads)  # a dispatch-bound tiny model: more threads only contend
    chunk, fps = settings["chunk_frames"], settings["fps"]
    stride = bundle.decoder.temporal_stride
    if settings.get("latent_frames") is not None:
        n_latent = settings["latent_frames"]
        if n_latent % chunk:
            lo = n_latent - n_latent % chunk
            raise UserError(f"--latent-frames must be a multiple of the chunk ({chunk}); "
                            f"use {lo or chunk} or {lo + chunk}")
    else:
        seconds = settings.get("duration") or schedule.total_seconds or DEFAULT_SECONDS
        n_latent = latent_frames_for(seconds, fps, stride, chunk)
    n_chunks = n_latent // chunk
    starts = schedule.start_chunks(chunk * stride / fps)
    if starts[-1] >= n_chunks:
        raise UserError(f"the prompt schedule starts segment {len(starts)} at chunk {starts[-1]}, but the "
                        f"video has only {n_chunks} chunks; lengthen --duration or shorten the schedule")
    reference = settings["noise"] == "reference"
    config = GenerationConfig(latent_hw=bundle.latent_hw, chunk_frames=chunk, seed=settings["seed"],
                              noise=settings["noise"], noise_frames=n_latent if reference else None)
    try:
        texts = []
        for seg in schedule.segments:
            texts.append(bundle.model.encode_text(bundle.text_encoder.encode([seg.prompt])))
            for prompt in bundle.text_encoder.truncated:
                print(f"memrope: warning: prompt cut to the encoder's {bundle.text_encoder.text_len} tokens: "
                      f"{prompt[:60]!r}...", file=sys.stderr)
        generator = StreamingGenerator(bundle.model, policy, texts[0], config, decoder=bundle.decoder,
                                       attention=settings.get("attention", "default"))
        settings["attention"] = generator.attention.name  # "auto" resolved: a resume keeps the kernel
        preflight(policy, bundle.model.rope, chunk, n_chunks)
    except ValueError as e:
        raise UserError(str(e)) from None
    switches = {start: (texts[i], schedule.segments[i].cut) for i, start in enumerate(starts) if i > 0}
    settings["schedule"] = [vars(seg) for seg in schedule.segments]  # frozen into the manifest
    return Prepared(bundle, generator, n_chunks, n_latent, switches, schedule, starts)


class DirectSink:
    """Frames straight into one fragmented MP4."""

    def __init__(self, out: Path, fps: int):
        from .video import VideoWriter

        self.writer = VideoWriter(out, fps=fps)

    def chunk(self, result, stats: dict[str, Any]) -> None:
        self.writer.write(result.frames[0])

    def checkpoint_due(self, chunks_done: int) -> bool:
        return False

    def checkpoint(self) -> None:
        """Nothing to save: a direct file is not resumable (see --checkpoint-every)."""

    def finish(self, complete: bool) -> int:
        self.writer.close()
        return self.writer.frames_written


class SessionSink:
    """Segments + checkpoints in a run directory; the final MP4 is assembled from segments."""

    def __init__(self, run: RunDirectory, manifest: Manifest, generator, out: Path, fps: int, every: int,
                 save_latents: bool):
        self.run, self.manifest, self.generator = run, manifest, generator
        self.out, self.fps, self.every, self.save_latents = out, fps, every, save_latents
        self.writer = None
        self.pending: list[dict[str, Any]] = []
        self.latents: list[torch.Tensor] = []
        self.first_chunk = manifest.chunks_done

    def chunk(self, result, stats: dict[str, Any]) -> None:
        from .video import VideoWriter

        if self.writer is None:
            self.first_chunk = result.index
            self.writer = VideoWriter(self.run.segment_path(f"seg_{result.index:06d}.mp4"), fps=self.fps)
        frames = result.frames[0]
        self.writer.write(frames)
        stats["frames_sha256"] = hashlib.sha256(frames.cpu().numpy().tobytes()).hexdigest()
        self.pending.append(stats)
        if self.save_latents:
            self.latents.append(result.latents.detach().cpu())

    def checkpoint_due(self, chunks_done: int) -> bool:
        return self.every > 0 and chunks_done % self.every == 0

    def checkpoint(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        name = f"seg_{self.first_chunk:06d}.mp4"
        if self.save_latents:
            from safetensors.torch import save_file

            save_file({"latents": torch.cat(self.latents, dim=2).contiguous()},
                      str(self.run.segment_path(name).with_suffix(".latents.safetensors")))
        self.manifest.segments.append(Segment(name, self.first_chunk, len(self.pending), self.writer.frames_written))
        self.manifest.chunks_done += len(self.pending)
        self.manifest.chunk_stats.extend(self.pending)
        tensors, data = self.generator.state_dict()
        self.run.checkpoint(self.manifest, tensors, data)
        self.writer, self.pending, self.latents = None, [], []

    def finish(self, complete: bool) -> int:
        self.checkpoint()
        if complete:
            self.manifest.complete = True
            atomic_write_json(self.run.path / "manifest.json", self.manifest.to_json())
        return self.run.assemble(self.manifest, self.out)


def _summary(chunks: list[dict], total_s: float) -> dict[str, Any]:
    steady = [c["ms"] for c in chunks[WARMUP_CHUNKS:]] or [c["ms"] for c in chunks] or [0.0]
    video_frames = sum(c["video_frames"] or 0 for c in chunks)
    return {
        "chunks": len(chunks),
        "latent_frames": sum(c["latent_frames"] for c in chunks),
        "video_frames": video_frames,
        "seconds": round(total_s, 3),
        "fps": round(video_frames / total_s, 2) if total_s > 0 else None,
        "first_chunk_ms": chunks[0]["ms"] if chunks else None,
        "steady_median_ms": round(statistics.median(steady), 3),
        "cache_bytes_max": max((c["cache_bytes"] for c in chunks), default=0),
        "cache_bytes_final": chunks[-1]["cache_bytes"] if chunks else 0,
        "max_frame_pos": max((c["max_frame_pos"] for c in chunks), default=0),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def generate(settings: dict[str, Any], resume: Path | None = None, progress: bool = True,
             on_chunk: Callable[[dict], None] | None = None) -> int:
    """Run (or continue) a generation; returns the process exit status."""
    run_dir = Path(settings["run_dir"]) if settings.get("run_dir") else None
    manifest = None
    if resume is not None:
        run_dir = resume
        try:
            manifest = RunDirectory(run_dir).load()
        except SessionError as e:
            raise UserError(str(e)) from None
        if manifest.complete:
            print(f"memrope: {run_dir} is already complete ({manifest.chunks_done} chunks)", file=sys.stderr)
            return 0
        settings = manifest.settings
    out = Path(settings["out"])
    prepared = prepare(settings)
    gen = prepared.generator
    if run_dir is not None:
        run = RunDirectory(run_dir)
        if manifest is None:
            try:
                manifest = run.create(settings)
            except SessionError as e:
                raise UserError(str(e)) from None
        else:
            run.discard_unfinished(manifest)
            if manifest.chunks_done:
                tensors, data = run.load_state(manifest)
                gen.load_state_dict(tensors, data)
            if gen.chunks_emitted != manifest.chunks_done:
                raise UserError(f"{run_dir}: state is at chunk {gen.chunks_emitted} but the manifest at "
                                f"{manifest.chunks_done}")
            # the prompt of the last chunk generated (one more than emitted when one awaits decoding)
            prompt_index = sum(1 for s in prepared.switches if s < gen.cache.clock.chunks)
            if prompt_index:
                gen.text = sorted(prepared.switches.items())[prompt_index - 1][1][0]
        sink = SessionSink(run, manifest, gen, out, settings["fps"], settings["checkpoint_every"],
                           settings.get("save_latents", False))
    else:
        sink = DirectSink(out, settings["fps"])
    done = manifest.chunks_done if manifest else 0
    chunks: list[dict] = list(manifest.chunk_stats) if manifest else []
    n_video = 1 + gen.decoder.temporal_stride * (prepared.n_latent - 1)
    print(f"memrope: {prepared.bundle.name}, policy {settings['policy']}, {prepared.n_latent} latent frames = "
          f"{n_video} frames ({n_video / settings['fps']:.1f} s at {settings['fps']} fps) -> {out}"
          + (f", resuming at chunk {done}" if done else ""), file=sys.stderr)
    from tqdm import tqdm

    start = time.perf_counter()
    produced = 0
    status = 0
    try:
        with torch.inference_mode(), StopFlag() as stop, tqdm(total=prepared.n_chunks, initial=done, unit="chunk",
                                                             disable=not progress, file=sys.stderr) as bar:
            for result in gen.stream(prepared.n_chunks, prepared.switches,
                                     overlap_decode=settings.get("overlap_decode", True)):
                if not torch.isfinite(result.latents).all():  # one host sync per chunk, by design
                    raise RunFailure(f"non-finite values (NaN/inf) in the latents of chunk {result.index}; "
                                     f"stopped before writing it" + (f", last good state kept in {run_dir}"
                                                                     if run_dir else ""))
                sink.chunk(result, result.stats)
                chunks.append(result.stats)
                produced += result.frames.shape[1] if result.frames is not None else 0
                if on_chunk:
                    on_chunk(result.stats)
                if sink.checkpoint_due(result.index + 1) or stop.signal is not None:
                    sink.checkpoint()
                bar.set_postfix(fps=f"{produced / (time.perf_counter() - start):.1f}",
                                pos=result.stats["max_frame_pos"])
                bar.update(1)
                if stop.signal is not None:
                    status = EXIT_INTERRUPTED
                    break
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RunFailure(f"disk full while writing ({e}); " + (
                f"the run can continue from its last checkpoint: free space, then memrope generate --resume "
                f"{run_dir}" if run_dir else "use --checkpoint-every N to make long runs resumable")) from None
        raise
    except RunFailure:
        if isinstance(sink, DirectSink):
            sink.finish(complete=False)
        raise
    frames = sink.finish(complete=status == 0)
    total = time.perf_counter() - start
    summary = _summary(chunks, total)
    if status == EXIT_INTERRUPTED:
        where = f"; continue with: memrope generate --resume {run_dir}" if run_dir else \
            " (not resumable: use --checkpoint-every N)"
        print(f"memrope: interrupted after chunk {len(chunks)}; {frames} frames in {out}{where}", file=sys.stderr)
    else:
        print(f"memrope: wrote {frames} frames in {total:.1f} s ({summary['fps']} fps this session), "
              f"peak RSS {summary['peak_rss_mb']} MB", file=sys.stderr)
    if settings.get("stats"):
        atomic_write_json(Path(settings["stats"]), {
            "memrope": __version__, "run": json.loads(json.dumps(gen.describe(), default=str)),
            "attention": {"kernel": gen.attention.name, "auto_timings_ms": gen.attention.timings_ms},
            "noise": settings["noise"], "pixels": settings["model"]["pixels"],
            "lora_mode": settings["model"]["lora_mode"] if settings["model"].get("lora") else None,
            "prompts": settings["schedule"], "prompt_starts": prepared.starts, "chunks": chunks,
            "summary": summary})
    return status
